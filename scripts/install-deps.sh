#!/usr/bin/env bash
# Installs, as root on Debian, every tool the demo and the tests use:
# nftables, both iptables flavours, ipset, ipvsadm, conntrack, iproute2 and
# Python (the kernel tests' servers and probes), plus what the e2e build
# and the IPVS VM need (curl, openssl, xz), and what the node harness
# (e2e/node) needs: containerd, runc, the CNI plugins, gcc for its pause
# binary, and the tools its test images carry (busybox, bash, GNU wget,
# netcat-openbsd), and what scripts/test-dockerfile.sh needs to build
# deploy/Dockerfile without a container daemon (buildah, debootstrap).
# `.ci/run` runs this too.
#
#   bash scripts/install-deps.sh
#
# Rust (1.85 or newer) is not installed here; Go for the e2e suite comes
# from scripts/go-toolchain.sh when the machine has none recent enough.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run this as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    nftables iptables ipset ipvsadm conntrack iproute2 procps curl python3 openssl xz-utils >/dev/null
# containerd must not start on the host: the node harness runs its own, in
# network namespaces. policy-rc.d keeps the package from starting it.
if ! command -v containerd >/dev/null && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends \
    containerd runc containernetworking-plugins gcc libc6-dev busybox-static bash wget netcat-openbsd \
    util-linux >/dev/null
apt-get install -y -qq buildah debootstrap >/dev/null
echo "install-deps: nftables, iptables, ipset, ipvsadm, conntrack, iproute2, python3, containerd, buildah and the e2e build's tools are installed"
