#!/usr/bin/env bash
# make test, RUNS times in a row, on a machine kept busy by two busy loops,
# from a job whose SIGINT is ignored (as CI and `nohup` start jobs): the
# suite must pass every time. Prints each run's result and the tally; exits
# non-zero if any run failed. Logs: bench-results/stress-N.log.
set -u
runs=${1:-10}
cd "$(dirname "$0")/.."
mkdir -p bench-results
busy=()
for _ in 1 2; do
    python3 -c 'while True: pass' &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
passed=0
for i in $(seq 1 "$runs"); do
    start=$SECONDS
    # `trap '' INT` in the subshell: its children inherit SIGINT ignored.
    if (trap '' INT; make --no-print-directory test > "bench-results/stress-$i.log" 2>&1); then
        passed=$((passed + 1))
        echo "run $i/$runs: passed in $((SECONDS - start)) s"
    else
        echo "run $i/$runs: FAILED in $((SECONDS - start)) s (bench-results/stress-$i.log):"
        grep -E "^(FAILED|ERROR)|panicked|test result: FAILED" "bench-results/stress-$i.log" | head -5
    fi
done
echo "stress-test: $passed passed, $((runs - passed)) failed"
[ "$passed" -eq "$runs" ]
