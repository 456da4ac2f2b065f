#!/usr/bin/env bash
# Runs each test binary of the workspace alone (every crate's unit tests, every integration
# test, the doc tests) and prints its wall time, slowest first, with the sum: what each adds
# to `make test`, so that a change sees its cost. Run by `make test-times`, after the build.
# A binary that fails is marked and the script exits non-zero once all have run.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=$(cargo test --release --workspace --no-run --message-format=json 2> /dev/null | python3 -c '
import json, sys
seen = set()
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") != "compiler-artifact" or not message.get("executable"):
        continue
    package = message["package_id"].split("#")[-1].split("@")[0].split("/")[-1]
    target = message["target"]
    kind = {"lib": "--lib", "cdylib": "--lib", "bin": "--bin", "test": "--test"}.get(target["kind"][0])
    if kind and (package, kind, target["name"]) not in seen:
        seen.add((package, kind, target["name"]))
        print(package, kind, target["name"])
')

results=$(mktemp)
trap 'rm -f "$results"' EXIT
failed=0
while read -r package kind name; do
    args=(-p "$package" "$kind")
    [ "$kind" = --lib ] || args+=("$name")
    started=$(date +%s.%N)
    status=ok
    cargo test --release -q "${args[@]}" > /dev/null 2>&1 || { status=FAILED; failed=1; }
    printf '%s %s %s\n' "$(echo "$(date +%s.%N) - $started" | bc)" "$package $kind $name" "$status" >> "$results"
done <<< "$targets"
started=$(date +%s.%N)
status=ok
cargo test --release -q --workspace --doc > /dev/null 2>&1 || { status=FAILED; failed=1; }
printf '%s %s %s\n' "$(echo "$(date +%s.%N) - $started" | bc)" "workspace --doc" "$status" >> "$results"

printf '%9s  %-50s %s\n' seconds "test binary" result
sort -rn "$results" | while read -r seconds what; do
    printf '%9.1f  %-50s %s\n' "$seconds" "${what% *}" "${what##* }"
done
awk '{ total += $1 } END { printf "%9.1f  total\n", total }' "$results"
exit "$failed"
