#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (see fuzz/README.md) one after another, each for
# FUZZ_SECONDS (default 60). FUZZ_TARGETS names some (space-separated; default: all).
# Every target runs even after another failed; the script fails if any found a crash,
# a failed invariant, a timeout (10 s for one input) or ran out of memory. libFuzzer
# leaves the input in fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run --fuzz-dir fuzz -s none -a <target> <file>
#
# The committed seeds in fuzz/corpus/<target>/ are only read; inputs that reach new code
# go to fuzz/grown/<target>/ (not committed), so later runs start from them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-all}
export PATH="$ROOT/.tools/bin:$PATH"

# No sanitizer: core has no `unsafe`, and AddressSanitizer would halve the executions
# on a small machine. Debug assertions on: an integer overflow is a finding too (the
# .wasm would wrap silently).
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"
if [ "$targets" = all ]; then
  targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

results=()
failed=()
for t in $targets; do
  [ -d "fuzz/corpus/$t" ] || { echo "no seeds for fuzz target $t (fuzz/corpus/$t)" >&2; exit 2; }
  mkdir -p "fuzz/grown/$t"
  log="fuzz/grown/$t.log"
  echo "== $t: ${seconds}s"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "$ROOT/fuzz/grown/$t" "$ROOT/fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=16384 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n1 | awk '{print $2}')
  corpus=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n1 | awk '{print $2}')
  if [ "$status" -eq 0 ]; then
    verdict=ok
  else
    verdict="FAILED (exit $status, see $log and fuzz/artifacts/$t/)"
    failed+=("$t")
    tail -n 30 "$log" >&2
  fi
  results+=("$(printf '%-16s %12s executions  corpus %-12s %s' "$t" "${execs:-?}" "${corpus:-?}" "$verdict")")
done

echo
echo "fuzzing, ${seconds}s per target:"
printf '  %s\n' "${results[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}" >&2
  exit 1
fi
