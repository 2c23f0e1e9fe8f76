#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, scenario, doc and (as
# root) kernel tests in private network namespaces. Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "kproxy: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
