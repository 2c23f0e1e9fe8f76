#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, scenario, doc, kernel
# tests in private network namespaces (as root) and the e2e suite against a
# real kube-apiserver (as root, with Go), the IPVS backend's kernel tests
# in a VM with an IPVS kernel (scripts/test-ipvs-vm.sh), the demo, the
# Dockerfile's build (scripts/test-dockerfile.sh), and the node tests on
# real kubelet nodes (e2e/node/test.sh). Ends with one total line; tests
# that could not run here (no root, a missing tool, no Go) count as skipped,
# not passed, and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
background=()
# Background jobs stop with this script, by the PIDs it started.
trap 'for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -f "$log" "$log".*' EXIT
status=0
# phase NAME STARTED: one line saying how long a phase took, so a slow CI
# run says where its time went.
phase() { echo "test.sh: $1 took $((SECONDS - $2)) s"; }
if command -v go >/dev/null && [ "$(id -u)" = 0 ]; then
    # The e2e suite's kube-apiserver, etcd and kube-proxy: built once and
    # cached outside the repository (a no-op when warm).
    start=$SECONDS
    bash e2e/k8s/build.sh >/dev/null
    echo "e2e binaries ready in $((SECONDS - start)) s"
fi
start=$SECONDS
# Built first only to say how long building takes (errors show below).
cargo test --workspace --no-run --quiet >/dev/null 2>&1 || true
phase "building the tests" "$start"
# While the tests run (much of it waiting on probes, timeouts and API
# servers), two CPU-bound builds use what the tests leave idle, at the
# lowest priority so the tests keep the CPU they need: the node tests'
# Go binaries (e2e/node/test.sh waits on the same build's lock, or finds
# it done) and the Dockerfile test (a release build in a container; its
# output is shown in its turn below).
if [ "$(id -u)" = 0 ] && command -v go >/dev/null && command -v containerd >/dev/null; then
    nice -n 19 bash e2e/node/build.sh >"$log.node-build" 2>&1 &
    background+=("$!")
fi
dockerfile_start=$SECONDS
(nice -n 19 bash scripts/test-dockerfile.sh >"$log.dockerfile" 2>&1; echo "$?" >"$log.dockerfile-status") &
background+=("$!")
start=$SECONDS
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
phase "cargo test" "$start"
# The IPVS backend's kernel tests, in a VM with an IPVS kernel.
start=$SECONDS
bash scripts/test-ipvs-vm.sh 2>&1 | tr -d '\r' | tee -a "$log" || status=$?
phase "the IPVS VM tests" "$start"
start=$SECONDS
# The README's first command, the demo, as a test: every answer it gets
# must be the expected one.
if [ "$(id -u)" = 0 ] && command -v curl >/dev/null && command -v nft >/dev/null; then
    if bash scripts/demo.sh > "$log.demo" 2>&1; then
        echo "test result: ok. 1 passed; 0 failed; 0 ignored (scripts/demo.sh)" | tee -a "$log"
    else
        cat "$log.demo"
        echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (scripts/demo.sh)" | tee -a "$log"
        status=1
    fi
    rm -f "$log.demo"
elif [ "${CI:-}" = true ]; then
    echo "scripts/demo.sh: needs root, curl and nft, and CI must run it" | tee -a "$log"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (scripts/demo.sh)" | tee -a "$log"
    status=1
else
    echo "SKIPPED demo: scripts/demo.sh needs root, curl and nft" | tee -a "$log"
fi
phase "the demo" "$start"
# deploy/Dockerfile, built with buildah as a user with a registry would,
# and the image it makes run (started in the background above).
start=$SECONDS
wait "${background[-1]}" || true
tee -a "$log" <"$log.dockerfile"
[ "$(cat "$log.dockerfile-status" 2>/dev/null)" = 0 ] || status=1
phase "waiting for the Dockerfile test ($((SECONDS - dockerfile_start)) s since its start)" "$start"
start=$SECONDS
# The node tests: a real kubelet + containerd cluster running kproxy as
# deploy/'s DaemonSet, judged by Kubernetes' own Services specs, with
# upstream kube-proxy as the reference, and a takeover from upstream.
bash e2e/node/test.sh 2>&1 | tee -a "$log" || status=$?
phase "the node tests" "$start"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     /^SKIPPED / { s += 1; if ($2 != "IPVS" && $2 != "demo:" && $2 != "node:" && $2 != "dockerfile:") k += 1 }
     END { printf "kproxy: %d passed, %d failed, %d skipped\n", p - k, f, s }' "$log"
exit "$status"
