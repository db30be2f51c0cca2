#!/usr/bin/env bash
# The GPU check: builds the model maths (liblego_sdk, liblego_llm and bench/gpu_check, LEGO_LLM_ONLY) with
# this machine's own torch and CUDA toolkit, runs it on the GPU, and writes one JSON of results:
# parity of the model maths on CUDA, device copy bandwidth, decode tokens/s of a 7B-shaped LLaMA with and
# without CUDA graphs as % of the bandwidth roofline, and one training step's MFU for a 1.3B-shaped model
# in each of lego train's bf16 precisions (bf16 weights with fp32 masters; bf16 autocast).
# docs/gpu.md explains each number.
#
#   scripts/gpu-check.sh [--out FILE] [--build-dir DIR]   on a GPU machine
#   scripts/gpu-check.sh --cpu-dry-run [...]               the same steps on a CPU, tiny shapes
#
# Needs: cmake (ninja if present), a C++20 compiler, a Python whose torch is a CUDA build (PYTHON, default
# python3, else the setup venv), the CUDA toolkit (nvcc) for a CUDA build, and nlohmann_json's CMake
# package (Debian: nlohmann-json3-dev; elsewhere put its prefix in LEGO_DEPS_PREFIX). Nothing of Boost,
# OpenCV, FFmpeg or sentencepiece. Exit status: 0 when every section ran and every parity check passed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/gpu-check.json
build=""
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    --cpu-dry-run) dry=1; shift ;;
    *) echo "usage: scripts/gpu-check.sh [--cpu-dry-run] [--out FILE] [--build-dir DIR]" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
fail() { echo "gpu-check: $*" >&2; exit 1; }

python=${PYTHON:-python3}
if ! "$python" -c 'import torch' 2>/dev/null; then
  python=${LEGO_VENV:-$HOME/.cache/lego/venv}/bin/python
  "$python" -c 'import torch' 2>/dev/null || fail "no Python with torch found: set PYTHON"
fi
read -r torch_dir torch_cuda < <("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__), torch.version.cuda or "")')
[ -n "$torch_dir" ] || fail "could not locate torch"

with_cuda=OFF
if [ -n "$torch_cuda" ] && command -v nvcc >/dev/null; then
  with_cuda=ON
elif [ $dry = 0 ]; then
  fail "a GPU run needs a CUDA torch (this one: '${torch_cuda:-cpu}') and nvcc on PATH"
fi
if [ $dry = 0 ]; then
  nvidia-smi -L >/dev/null 2>&1 || fail "no GPU visible (nvidia-smi -L failed); use --cpu-dry-run on a CPU machine"
fi

build=${build:-$root/build-gpu-check}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && generator=()  # keep whatever generator made the tree
mkdir -p "$build"
prefix="$torch_dir${LEGO_DEPS_PREFIX:+;$LEGO_DEPS_PREFIX}"
echo "gpu-check: torch $torch_dir (CUDA ${torch_cuda:-none}), LEGO_WITH_CUDA=$with_cuda, build in $build"
# No precompiled header: with many cores, compiling the few sources in parallel is faster than the PCH first.
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLEGO_LLM_ONLY=ON \
  -DLEGO_WITH_CUDA=$with_cuda -DLEGO_USE_PCH=OFF -DLEGO_WERROR=OFF "-DCMAKE_PREFIX_PATH=$prefix" >"$build/configure.log" 2>&1 ||
  { tail -20 "$build/configure.log" >&2; fail "configure failed (log: $build/configure.log)"; }
cmake --build "$build" --target gpu_check -j "$(nproc)" >"$build/build.log" 2>&1 ||
  { grep -m5 -A3 'error' "$build/build.log" >&2; fail "build failed (log: $build/build.log)"; }
built=$(date +%s)
echo "gpu-check: built in $((built - start)) s"

if [ $dry = 1 ]; then
  args=(--device cpu --quick)
else
  args=(--device cuda)
fi
mkdir -p "$(dirname "$out")"
"$build/bin/gpu_check" "${args[@]}" --out "$out.run"
status=$?
[ -f "$out.run" ] || fail "gpu_check wrote nothing (exit $status)"
end=$(date +%s)
"$python" - "$out.run" "$out" "$((built - start))" "$((end - start))" "$dry" "$status" <<'EOF'
import json, os, sys
src, dst, build_s, total_s, dry, status = sys.argv[1:]
r = json.load(open(src))
r["script"] = {"build_seconds": int(build_s), "total_seconds": int(total_s), "cpu_dry_run": dry == "1",
               "gpu_check_exit": int(status)}
tmp = dst + ".tmp"
with open(tmp, "w") as f:
    json.dump(r, f, indent=2)
    f.write("\n")
os.replace(tmp, dst)
os.remove(src)
d = r.get("decode", {})
def pct(x):
    return f"{x:.1f} %" if isinstance(x, (int, float)) else str(x)
print(f"gpu-check: parity all pass: {r.get('parity', {}).get('all_pass')}")
for mode in ("eager", "cuda_graph"):
    m = d.get(mode)
    if isinstance(m, dict):
        print(f"gpu-check: decode {mode}: {m['tokens_per_s']:.1f} tokens/s, {pct(m['roofline_percent'])} of the roofline")
for key in ("train", "train_autocast"):
    t = r.get(key, {})
    if "mfu_percent" in t:
        print(f"gpu-check: training step ({t['precision']}) {t['step_s']:.3f} s, MFU {pct(t['mfu_percent'])}")
print(f"gpu-check: {total_s} s in all; results in {dst}")
EOF
exit $status
