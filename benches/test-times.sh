#!/usr/bin/env bash
# Runs each integration test binary of the workspace alone, then the crates' unit tests,
# binaries' tests and doc tests, and prints each one's wall time, slowest first, with the
# sum: what each adds to `make test`, so that a change sees its cost. Run by
# `make test-times`. Every run selects with --workspace, as `make test` does, so that
# cargo resolves the same features and reuses the same build instead of making another.
# A binary that fails is marked and the script exits non-zero once all have run.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release --workspace --no-run --quiet
tests=$(cargo test --release --workspace --no-run --message-format=json 2> /dev/null | python3 -c '
import json, sys
names = set()
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") and message["target"]["kind"] == ["test"]:
        names.add(message["target"]["name"])
print("\n".join(sorted(names)))
')

results=$(mktemp)
trap 'rm -f "$results"' EXIT
failed=0
timed() {
    local what=$1
    shift
    local started status=ok
    started=$(date +%s.%N)
    cargo test --release --workspace -q "$@" > /dev/null 2>&1 || { status=FAILED; failed=1; }
    printf '%s %s %s\n' "$(echo "$(date +%s.%N) - $started" | bc)" "$what" "$status" >> "$results"
}
for name in $tests; do
    timed "$name" --test "$name"
done
timed "unit tests of every crate" --lib
timed "tests of the binaries" --bins
timed "doc tests" --doc

printf '%9s  %-40s %s\n' seconds "tests" result
sort -rn "$results" | while read -r seconds what; do
    printf '%9.1f  %-40s %s\n' "$seconds" "${what% *}" "${what##* }"
done
awk '{ total += $1 } END { printf "%9.1f  total\n", total }' "$results"
exit "$failed"
