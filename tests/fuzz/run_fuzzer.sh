#!/usr/bin/env bash
# Runs one libFuzzer target with lego's options: run_fuzzer.sh BINARY NAME MAX_LEN SECONDS WORK_DIR [ARGS...]
# The committed seeds (tests/fuzz/corpus/NAME) are read, never written: new inputs go to
# WORK_DIR/corpus/NAME, crashes to WORK_DIR/artifacts/NAME/, the log to WORK_DIR/logs/NAME.log.
# Extra arguments go to libFuzzer (e.g. -jobs=2). Exits non-zero when the fuzzer found something.
set -uo pipefail
bin=$1 name=$2 max_len=$3 seconds=$4 work=$5
shift 5
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$work/corpus/$name" "$work/artifacts/$name" "$work/logs"
dict=()
[ -f "$here/dict/$name.dict" ] && dict=(-dict="$here/dict/$name.dict")
# libtorch's and FFmpeg's one-time allocations are not leaks of ours; UBSan reports abort the run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
log=$work/logs/$name.log
"$bin" -max_len="$max_len" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/$name/" "${dict[@]}" "$@" "$work/corpus/$name" "$here/corpus/$name" >"$log" 2>&1
rc=$?
# The summary a reader wants: executions, speed, coverage, and what was found.
grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^#[0-9]+[[:space:]]+DONE|ERROR: |SUMMARY: |invariant broken|Test unit written' "$log" | head -20
echo "fuzz $name: exit $rc, $(ls "$work/artifacts/$name" | wc -l) artifact(s) in $work/artifacts/$name, log $log"
exit $rc
