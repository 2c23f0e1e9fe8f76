#!/usr/bin/env bash
# Build the real Kubernetes components used by kproxy's end-to-end tests from
# source, through the Go module proxy, using the pinned modules next to this
# script:
#   ./go.mod       k8s.io/kubernetes v1.34.4 -> kube-apiserver, kube-proxy, kubectl
#   ./etcd/go.mod  go.etcd.io/etcd/server/v3 v3.6.5 -> etcd
#
# Usage: bash e2e/k8s/build.sh [OUT_DIR]
#   OUT_DIR defaults to ${KPROXY_E2E_BIN:-$HOME/.cache/kproxy-e2e/bin-v1.34.4}.
#
# The absolute OUT_DIR is printed as the last line of stdout; everything else
# goes to stderr, so callers can do: BIN=$(bash e2e/k8s/build.sh | tail -1)
#
# If all binaries already exist in OUT_DIR and OUT_DIR/.build-stamp matches the
# hash of the pinned go.mod/go.sum files (and of the build flags below), nothing
# is rebuilt. Sources come from GOMODCACHE and build artefacts go to GOCACHE
# (Go's defaults, outside the repository); nothing is written inside the repo.
set -euo pipefail

# Keep stdout clean for the final OUT_DIR line.
exec 3>&1 1>&2

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=../go-env.sh
source "$SCRIPT_DIR/../go-env.sh"
BINARIES=(etcd kube-apiserver kube-proxy kubectl)

OUT_DIR=$(out_dir "${1:-${KPROXY_E2E_BIN:-$HOME/.cache/kproxy-e2e/bin-$K8S_VERSION}}")
ETCD_LDFLAGS="-s -w"

stamp_hash() {
  {
    for f in go.mod go.sum etcd/go.mod etcd/go.sum; do
      echo "== $f"
      cat "$SCRIPT_DIR/$f"
    done
    echo "== flags"
    echo "CGO_ENABLED=$CGO_ENABLED GOFLAGS=$GOFLAGS"
    echo "k8s ldflags: $K8S_LDFLAGS"
    echo "etcd ldflags: $ETCD_LDFLAGS"
  } | sha256sum | cut -d' ' -f1
}

STAMP_FILE="$OUT_DIR/.build-stamp"
WANT_STAMP=$(stamp_hash)

up_to_date() {
  [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$WANT_STAMP" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$OUT_DIR/$b" ]] || return 1
  done
}

if up_to_date; then
  echo "build.sh: binaries in $OUT_DIR are up to date" >&2
  echo "$OUT_DIR" >&3
  exit 0
fi

# Serialise concurrent builds into the same OUT_DIR.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT_DIR/.build-lock"
  flock 9
  if up_to_date; then
    echo "build.sh: binaries in $OUT_DIR are up to date" >&2
    echo "$OUT_DIR" >&3
    exit 0
  fi
fi

command -v go >/dev/null 2>&1 || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
echo "build.sh: building ${BINARIES[*]} into $OUT_DIR with $(go env GOVERSION)" >&2
echo "build.sh: GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)" >&2

rm -f "$STAMP_FILE"
TMP_DIR=$(mktemp -d "$OUT_DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP_DIR"' EXIT

build() { # build <name> <module dir> <package> <ldflags>
  local name=$1 moddir=$2 pkg=$3 ldflags=$4 start=$SECONDS
  echo "build.sh: go build $pkg -> $name" >&2
  go -C "$moddir" build -trimpath -ldflags "$ldflags" -o "$TMP_DIR/$name" "$pkg"
  echo "build.sh: built $name in $((SECONDS - start))s" >&2
}

TOTAL_START=$SECONDS
build etcd           "$SCRIPT_DIR/etcd" go.etcd.io/etcd/server/v3              "$ETCD_LDFLAGS"
build kube-apiserver "$SCRIPT_DIR"      k8s.io/kubernetes/cmd/kube-apiserver "$K8S_LDFLAGS"
build kube-proxy     "$SCRIPT_DIR"      k8s.io/kubernetes/cmd/kube-proxy     "$K8S_LDFLAGS"
build kubectl        "$SCRIPT_DIR"      k8s.io/kubernetes/cmd/kubectl        "$K8S_LDFLAGS"

for b in "${BINARIES[@]}"; do
  mv -f "$TMP_DIR/$b" "$OUT_DIR/$b"
done
echo "$WANT_STAMP" >"$STAMP_FILE"
echo "build.sh: done in $((SECONDS - TOTAL_START))s" >&2

echo "$OUT_DIR" >&3
