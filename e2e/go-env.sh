# Sourced by e2e/k8s/build.sh and e2e/node/build.sh: the pinned Kubernetes
# release, the version stamp upstream's own build (hack/lib/version.sh)
# injects, and the Go environment both builds use.

K8S_VERSION=v1.34.4
# Commit time of the v1.34.4 tag (from the module proxy's .info), used as a
# fixed buildDate so builds are reproducible.
K8S_BUILD_DATE=2026-02-10T12:53:36Z

# gitVersion matters beyond cosmetics: kube-apiserver derives its binary /
# emulation version from it (unset it would be v0.0.0-master).
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION"
  K8S_LDFLAGS+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
  K8S_LDFLAGS+=" -X $pkg.buildDate=$K8S_BUILD_DATE"
done

# Static binaries, module mode driven only by the pinned go.mod/go.sum
# (never rewritten), no workspace, no VCS stamping.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOWORK=off

# out_dir DIR: DIR made absolute (symlinks resolved) and created; refused,
# before anything is created, inside the repository (builds are cached
# outside it).
out_dir() {
  local repo dir
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
  dir=$(realpath -m -- "$1")
  case "$dir/" in
    "$repo"/*) echo "build.sh: refusing to put binaries inside the repository ($dir)" >&2; return 1 ;;
  esac
  mkdir -p "$dir"
  echo "$dir"
}
