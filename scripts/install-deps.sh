#!/usr/bin/env bash
# Installs, as root on Debian, every tool the demo and the tests use:
# nftables, both iptables flavours, ipset, ipvsadm, conntrack, iproute2 and
# Python (the kernel tests' servers and probes), plus what the e2e build
# and the IPVS VM need (curl, openssl, xz). `.ci/run` runs this too.
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
echo "install-deps: nftables, iptables, ipset, ipvsadm, conntrack, iproute2, python3 and the e2e build's tools are installed"
