#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, scenario, doc and (as
# root) kernel tests in private network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
