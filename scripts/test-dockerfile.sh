#!/usr/bin/env bash
# Builds deploy/Dockerfile as a user with a registry would, with buildah (no
# container daemon), and checks the image it makes: its entrypoint is
# kproxy, and kproxy and every tool kproxy's backends run start inside it.
#
# This machine reaches no container registry, so the Dockerfile's two base
# images are stood in for by local ones, built the way their publishers
# build them, and passed with --build-arg:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm, from the
#                         Debian archive apt is configured with;
#   rust:1-bookworm       that, plus gcc, libc6-dev, ca-certificates and
#                         this machine's Rust toolchain in /usr/local, and
#                         the CA certificates this machine adds to Debian's
#                         (/usr/local/share/ca-certificates), as a user
#                         behind a TLS-inspecting proxy adds them, so that
#                         cargo reaches crates.io as it does here.
# Both stay in buildah's store (/var/lib/containers) for the next run, as do
# the Dockerfile's cargo caches, so a warm run compiles only what changed.
# Build steps use the host's network (--network host: buildah's own network
# setup would add rules to the host's namespace); the checks run with none.
#
# Usage: bash scripts/test-dockerfile.sh
# Needs root, buildah and debootstrap (scripts/install-deps.sh installs
# them); without them says SKIPPED and exits 0, except under CI=true.
# Ends with a `test result:` line, as cargo's tests do.
set -euo pipefail
cd "$(dirname "$0")/.."

why=
if [ "$(id -u)" != 0 ]; then
    why="needs root (buildah's store and debootstrap)"
else
    for tool in buildah debootstrap rustc; do
        command -v "$tool" >/dev/null || why="${why:+$why, }missing $tool"
    done
    [ -z "$why" ] || why="$why (bash scripts/install-deps.sh installs them)"
fi
if [ -n "$why" ]; then
    if [ "${CI:-}" = true ]; then
        echo "scripts/test-dockerfile.sh must run in CI, but it $why" >&2
        echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (scripts/test-dockerfile.sh)"
        exit 1
    fi
    echo "SKIPPED dockerfile: $why"
    exit 0
fi

say() { echo "test-dockerfile: $*" >&2; }
BASE=localhost/kproxy-test/debian:bookworm-slim
RUST=localhost/kproxy-test/rust:$(rustc -V | awk '{print $2}')-bookworm
IMAGE=localhost/kproxy-dockerfile:test
containers=()
scratch=
cleanup() {
    local c
    for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
    [ -z "$scratch" ] || rm -rf "$scratch"
}
trap cleanup EXIT
new_container() { # new_container IMAGE: a working container in $c, removed at exit
    c=$(buildah from --pull=never "$1")
    containers+=("$c")
}
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

t=$SECONDS
if ! have_image "$BASE"; then
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2 == "bookworm" { print $1; exit }')
    [ -n "$mirror" ] || { say "apt knows no archive for bookworm"; exit 1; }
    scratch=$(mktemp -d /var/tmp/kproxy-debootstrap.XXXXXX)
    say "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$scratch/root" "$mirror" >"$scratch/log" 2>&1 ||
        { tail -20 "$scratch/log" >&2; exit 1; }
    rm -rf "$scratch"/root/var/cache/apt/archives/*.deb "$scratch"/root/var/lib/apt/lists/*
    new_container scratch
    tar -C "$scratch/root" -cf - . | tar -C "$(buildah mount "$c")" -xf -
    buildah umount "$c" >/dev/null
    buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    buildah commit --quiet "$c" "$BASE" >/dev/null
    rm -rf "$scratch"
    scratch=
    say "stand-in for debian:bookworm-slim: $BASE in $((SECONDS - t)) s"
fi
if ! have_image "$RUST"; then
    t=$SECONDS
    sysroot=$(rustc --print sysroot)
    new_container "$BASE"
    buildah run --network host "$c" -- sh -c 'apt-get update -q && apt-get install -q -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*' >/dev/null
    tar -C "$sysroot" --exclude=share/doc -cf - bin etc lib libexec share |
        tar -C "$(buildah mount "$c")/usr/local" -xf -
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$(buildah mount "$c")/usr/local/share/ca-certificates/"
        buildah run --network none "$c" -- update-ca-certificates >/dev/null
    fi
    buildah umount "$c" >/dev/null
    buildah config --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    buildah commit --quiet "$c" "$RUST" >/dev/null
    say "stand-in for rust:1-bookworm: $RUST in $((SECONDS - t)) s"
fi

t=$SECONDS
previous=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null | head -1) || true
say "buildah bud -f deploy/Dockerfile"
if ! buildah bud --quiet --network host --pull=never \
    --build-arg RUST_IMAGE="$RUST" --build-arg BASE_IMAGE="$BASE" \
    -f deploy/Dockerfile -t "$IMAGE" . >/dev/null; then
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (scripts/test-dockerfile.sh: the build failed)"
    exit 1
fi
say "built $IMAGE in $((SECONDS - t)) s"
# The image this name held before is no longer needed.
if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$IMAGE" | head -1)" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
fi

failures=()
check() { # check WHAT COMMAND...: COMMAND must succeed
    local what=$1
    shift
    "$@" >/dev/null 2>&1 || failures+=("$what")
}
entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
[ "$entrypoint" = '[/usr/local/bin/kproxy]' ] || failures+=("entrypoint is $entrypoint")
new_container "$IMAGE"
version=$(buildah run --network none "$c" -- /usr/local/bin/kproxy --version 2>&1) || true
want=$(python3 scripts/image.py --print-name)
[[ $version == "kproxy v${want##*:} "* ]] || failures+=("kproxy --version said: $version")
# Each tool talks to the kernel, in the container's own network namespace
# (--network none), with the capabilities the DaemonSet has.
run_in() { buildah run --network none --cap-add CAP_NET_ADMIN,CAP_NET_RAW "$c" -- "$@"; }
for argv in "nft list ruleset" "iptables-nft-save" "iptables-legacy-save" "ip6tables-nft-save" \
    "ipset list" "conntrack -L" "ip -br link"; do
    # shellcheck disable=SC2086 # each entry is a command line
    check "$argv" run_in $argv
done
# kproxy's main job inside the image: the bundled example, synced into the
# container's namespace (sysctls left alone: /proc/sys is read-only there).
sync=$(buildah run --network none --cap-add CAP_NET_ADMIN,CAP_NET_RAW \
    -v "$PWD/examples/cluster:/cluster:ro" "$c" -- sh -c '
    kproxy --proxy-mode nftables --hostname-override node-a --cluster-cidr 10.244.0.0/16 \
        --manifests /cluster --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
        --conntrack-tcp-timeout-close-wait 0 -v=2 2>/tmp/log &
    for _ in $(seq 300); do grep -q "synced.*IPv4" /tmp/log && break; sleep 0.1; done
    kill $!
    grep "synced.*IPv4" /tmp/log || cat /tmp/log
    nft list table ip kproxy-a' 2>&1) || true
[[ $sync == *'"synced" family="IPv4" full=true'* && $sync == *10.96.0.30* ]] ||
    failures+=("kproxy did not sync the example in the image: $sync")
# Debian's default iptables flavour is nft, as in image.py's image.
flavour=$(buildah run --network none "$c" -- iptables --version 2>&1) || true
[[ $flavour == *nf_tables* ]] || failures+=("iptables --version said: $flavour")
size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -1)
if [ ${#failures[@]} != 0 ]; then
    printf 'test-dockerfile: %s\n' "${failures[@]}" >&2
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (scripts/test-dockerfile.sh)"
    exit 1
fi
say "$IMAGE ($size): kproxy and its tools run"
echo "test result: ok. 1 passed; 0 failed; 0 ignored (scripts/test-dockerfile.sh)"
