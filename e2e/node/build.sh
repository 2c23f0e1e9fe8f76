#!/usr/bin/env bash
# Build what the node harness (e2e/node/cluster.sh) needs beyond e2e/k8s's
# binaries, from the pinned modules next to this script, through the Go
# module proxy:
#   ./go.mod          kubelet, kube-controller-manager, kube-scheduler,
#                     agnhost (the e2e test image's binary), the ginkgo CLI,
#                     and suite.test (Kubernetes' test/e2e/network specs)
#   ./coredns/go.mod  coredns (cluster DNS)
#   ./pause.c         pause (the sandbox process), with gcc -static
#
# Usage: bash e2e/node/build.sh [OUT_DIR]
#   OUT_DIR defaults to ${KPROXY_NODE_BIN:-$HOME/.cache/kproxy-e2e/node-v1.34.4}.
# Prints the absolute OUT_DIR as the last line of stdout (everything else
# goes to stderr). A no-op when OUT_DIR/.build-stamp matches the inputs.
set -euo pipefail
exec 3>&1 1>&2

BINARIES=(kubelet kube-controller-manager kube-scheduler agnhost ginkgo suite.test coredns pause)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=../go-env.sh
source "$HERE/../go-env.sh"
OUT_DIR=$(out_dir "${1:-${KPROXY_NODE_BIN:-$HOME/.cache/kproxy-e2e/node-$K8S_VERSION}}")
LDFLAGS=$K8S_LDFLAGS
JOBS=${JOBS:-2}

stamp() {
  (cd "$HERE" && cat go.mod go.sum coredns/go.mod coredns/go.sum pause.c suite/*.go
   echo "$CGO_ENABLED $GOFLAGS $LDFLAGS") | sha256sum | cut -d' ' -f1
}
WANT=$(stamp)
up_to_date() {
  [[ -f $OUT_DIR/.build-stamp && $(cat "$OUT_DIR/.build-stamp") == "$WANT" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x $OUT_DIR/$b ]] || return 1; done
}
if up_to_date; then
  echo "build.sh: node binaries in $OUT_DIR are up to date"
  echo "$OUT_DIR" >&3
  exit 0
fi
exec 9>"$OUT_DIR/.build-lock"
flock 9
if up_to_date; then echo "$OUT_DIR" >&3; exit 0; fi
command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH"; exit 1; }
command -v gcc >/dev/null || { echo "build.sh: 'gcc' not found in PATH"; exit 1; }

rm -f "$OUT_DIR/.build-stamp"
TMP=$(mktemp -d "$OUT_DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
t=$SECONDS
step() { echo "build.sh: $1 in $((SECONDS - t)) s"; t=$SECONDS; }
go -C "$HERE" build -p "$JOBS" -trimpath -ldflags "$LDFLAGS" -o "$TMP/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/test/images/agnhost
step "kubelet, kube-controller-manager, kube-scheduler, agnhost"
go -C "$HERE" test -c -p "$JOBS" -trimpath -ldflags "$LDFLAGS" -o "$TMP/suite.test" ./suite
step "suite.test"
go -C "$HERE" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$TMP/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
step "ginkgo"
go -C "$HERE/coredns" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$TMP/coredns" github.com/coredns/coredns
step "coredns"
gcc -static -O2 -o "$TMP/pause" "$HERE/pause.c"
for b in "${BINARIES[@]}"; do mv -f "$TMP/$b" "$OUT_DIR/$b"; done
echo "$WANT" >"$OUT_DIR/.build-stamp"
echo "$OUT_DIR" >&3
