#!/usr/bin/env bash
# Installs the Go toolchain the e2e suite needs into
# ~/.cache/kproxy-e2e/go, using only Debian's Go package and the Go module
# proxy that Go is configured with (the toolchain is published there as the
# module golang.org/toolchain). Debian 12's Go is 1.19, too old to build
# Kubernetes 1.34 and too old to switch toolchains by itself.
set -euo pipefail
version=go1.24.6
dest="$HOME/.cache/kproxy-e2e/go"
if [ -x "$dest/bin/go" ] && "$dest/bin/go" version | grep -q "$version "; then
    exit 0
fi
if ! command -v go >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends golang-go >/dev/null
fi
arch=$(go env GOARCH)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Outside any module, with a private module cache: the download is the
# module's extracted tree.
dir=$(cd "$work" && GOMODCACHE="$work/mod" GOFLAGS=-modcacherw go mod download -json "golang.org/toolchain@v0.0.1-$version.linux-$arch" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ ! -x "$dir/bin/go" ] && [ ! -f "$dir/bin/go" ]; then
    echo "go-toolchain: the module proxy did not provide $version for linux/$arch" >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$dir" "$dest"
# Module zips carry no file modes: the tools must be executable.
chmod -R u+w "$dest"
chmod +x "$dest"/bin/* "$dest"/pkg/tool/*/*
"$dest/bin/go" version
