#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang-14, ASan + UBSan) and runs a fuzzing campaign, then
# writes a findings summary (docs/testing.md, "Fuzzing").
#
#   scripts/fuzz.sh [--seconds N] [--build-only] [TARGET...]
#
# TARGET is a name from tests/fuzz/CMakeLists.txt (safetensors, torch_bin, shard_index, config, grounding,
# chat_template, image_reader, video_reader, audio_reader); all of them by default, one after the other,
# N seconds each (default 300). The corpus grows in build-fuzz/campaign/corpus/TARGET across campaigns;
# crashes land in build-fuzz/campaign/artifacts/TARGET/; the summary is build-fuzz/campaign/summary.md.
# Exits non-zero when any target found something. LEGO_FUZZ_BUILD_DIR, LEGO_FUZZ_CC/CXX override.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
build=${LEGO_FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=300 build_only=0 targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(safetensors torch_bin shard_index config grounding chat_template image_reader video_reader audio_reader)
((${#targets[@]})) || targets=("${all[@]}")

"$root/scripts/setup.sh" || { echo "fuzz: setup failed"; exit 1; }
cc=${LEGO_FUZZ_CC:-clang-14} cxx=${LEGO_FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz: needs $cxx (Debian: clang-14 libclang-rt-14-dev)"; exit 1; }
torch_dir=${LEGO_TORCH_DIR:-${Torch_DIR:-$("$venv/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "share/cmake/Torch"))')}}
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
CC=$cc CXX=$cxx cmake -S "$root" -B "$build" -G Ninja -DTorch_DIR="$torch_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLEGO_FUZZ=ON -DLEGO_BUILD_TESTS=OFF -DLEGO_BUILD_BENCH=OFF ${LEGO_FUZZ_SECONDS:+-DLEGO_FUZZ_SECONDS=$LEGO_FUZZ_SECONDS} \
  >/dev/null || { echo "fuzz: configuring $build failed"; exit 1; }
cmake --build "$build" --target lego_fuzz_targets || { echo "fuzz: build failed"; exit 1; }
((build_only)) && exit 0

work=$build/campaign
mkdir -p "$work"
summary=$work/summary.md
{
  echo "# Fuzzing campaign $(date -u +%Y-%m-%dT%H:%MZ), ${seconds} s per target"
  echo
  echo "| target | executions | exec/s | coverage | corpus | findings |"
  echo "|---|---|---|---|---|---|"
} >"$summary"
status=0
for t in "${targets[@]}"; do
  max_len=$(sed -n "s/^lego_add_fuzz_target($t \([0-9]*\)).*/\1/p" "$root/tests/fuzz/CMakeLists.txt")
  [ -n "$max_len" ] || { echo "fuzz: unknown target $t" >&2; status=1; continue; }
  echo "== $t (${seconds} s)"
  "$root/tests/fuzz/run_fuzzer.sh" "$build/bin/fuzz/${t}_fuzz" "$t" "$max_len" "$seconds" "$work" || status=1
  log=$work/logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(find "$work/corpus/$t" -type f | wc -l)
  findings=$(find "$work/artifacts/$t" -type f | wc -l)
  echo "| $t | ${execs:-?} | ${speed:-?} | ${cov:-?} | $corpus | $findings |" >>"$summary"
done
{
  echo
  echo "## Findings"
  any=0
  for t in "${targets[@]}"; do
    for a in "$work/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      any=1
      echo "- $t: \`$a\` — reproduce: \`$build/bin/fuzz/${t}_fuzz $a\`"
      grep -m1 -E 'ERROR: |invariant broken|terminate called|what\(\)' "$work/logs/$t.log" | sed 's/^/  - /'
    done
  done
  ((any)) || echo "none"
} >>"$summary"
cat "$summary"
exit $status
