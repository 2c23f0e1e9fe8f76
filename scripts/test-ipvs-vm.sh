#!/usr/bin/env bash
# Runs the IPVS kernel tests (the `kernel_*` test targets of
# kproxy-backend-ipvs and kproxy-bin that need their `vm-tests` feature,
# the takeover from and into upstream's IPVS mode among them,
# and kproxy-netfilter's route and ipset netlink tests),
# then the IPVS benchmark at a tiny size (so its command cannot rot),
# inside a VM with a real IPVS kernel
# (scripts/ipvs-vm.sh): the machines' own kernel has no IPVS. Needs root;
# without it says SKIPPED and exits 0 (CI runs as root, so there it runs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED IPVS kernel tests: they boot a VM, which needs root here"
    exit 0
fi
# The VM runs the host's root filesystem: its tools are the host's.
missing=()
for tool in ipset ipvsadm iptables-legacy nft ip python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} != 0 ]; then
    why="missing ${missing[*]} (bash scripts/install-deps.sh installs them)"
    if [ "${CI:-}" = true ]; then
        echo "IPVS kernel tests must run in CI, but $why" >&2
        exit 1
    fi
    echo "SKIPPED IPVS kernel tests: $why"
    exit 0
fi
# The test binaries, built on the host (the VM sees the host's files):
# IPVS mode's, and the route and ipset netlink ones of kproxy-netfilter
# (they run on the host too, but only the VM's kernel has dummy
# interfaces, which IPVS mode's kube-ipvs0 is).
mapfile -t bins < <({ cargo test -p kproxy-backend-ipvs -p kproxy-bin --features kproxy-backend-ipvs/vm-tests,kproxy-bin/vm-tests --tests --no-run --message-format=json 2>/dev/null;
    cargo test -p kproxy-netfilter --test kernel_rtnl --test kernel_ipset --no-run --message-format=json 2>/dev/null; } |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] and t.get("name", "").startswith("kernel_"):
        print(m["executable"])')
if [ ${#bins[@]} = 0 ]; then
    echo "test-ipvs-vm: no kernel test binaries were built" >&2
    exit 1
fi
bench=$(cargo build -p kproxy-backend-ipvs --example kproxy-ipvs-bench --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("target", {}).get("name") == "kproxy-ipvs-bench":
        print(m["executable"])')
if [ -z "$bench" ]; then
    echo "test-ipvs-vm: kproxy-ipvs-bench was not built" >&2
    exit 1
fi
# The e2e binaries (kube-apiserver, etcd, upstream kube-proxy) for the
# takeover test, built on the host. Their cache lives under $HOME, which
# the VM replaces with a fresh tmpfs, so they are linked (or copied) into
# a directory under /tmp, which the VM sees read-only, and named by
# KPROXY_E2E_BIN (passed into the VM, as every KPROXY_* variable is).
e2e_bin=$(bash e2e/k8s/build.sh | tail -1)
vm_bin=$(mktemp -d /tmp/kproxy-vm-e2e.XXXXXX)
trap 'rm -rf "$vm_bin"' EXIT
cp -l "$e2e_bin"/* "$e2e_bin"/.build-stamp "$vm_bin"/ 2>/dev/null || cp "$e2e_bin"/* "$e2e_bin"/.build-stamp "$vm_bin"/
chmod 755 "$vm_bin"
export KPROXY_E2E_BIN=$vm_bin
# etcd and kube-apiserver need more than the VM's default memory.
export KPROXY_VM_MEM=${KPROXY_VM_MEM:-3072}
echo "IPVS kernel tests in the VM: ${bins[*]##*/}, then kproxy-ipvs-bench"
# One line: the VM runs it as one.
# The takeover test's report (times and connection counts per pair of
# modes) is printed even when it passes.
script='rc=0; bench=$1; shift; for b in "$@"; do case $b in */kernel_ipvs_takeover-*) show=--show-output ;; *) show= ;; esac; "$b" --test-threads=1 --color never $show || rc=1; done; echo "kproxy-ipvs-bench at 20 Services x 2 endpoints:"; out=$("$bench" 20 2 ipvs) || rc=1; echo "$out"; echo "$out" | grep -q "^| ipvs | 20 | 2 |" || { echo "kproxy-ipvs-bench printed no row for 20 Services" >&2; rc=1; }; exit $rc'
bash scripts/ipvs-vm.sh bash -c "$script" vm-tests "$bench" "${bins[@]}"
