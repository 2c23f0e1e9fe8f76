#!/usr/bin/env bash
# The node tests, as scripts/test.sh runs them: a real cluster of kubelet +
# containerd nodes (cluster.sh), Kubernetes' own Services specs against
# kproxy's DaemonSet (conformance.sh) with upstream kube-proxy's as the
# reference, and a takeover from upstream on the running cluster
# (takeover.sh). Prints "test result:" lines that scripts/test.sh counts,
# and the results table.
#
# usage: e2e/node/test.sh [--all]
#   default (CI): the full default set against kproxy in nftables mode, the
#     [Conformance] Services specs against kproxy in iptables and userspace
#     modes and against upstream in nftables and iptables modes, every spec upstream passed also passed
#     by kproxy, and the nftables takeover.
#   --all: the full set against kproxy and upstream in both modes and
#     against kproxy in userspace mode, both
#     takeovers, then the spec that needs three nodes on a 3-node cluster.
# Needs root, Go, containerd, runc, the CNI plugins, gcc, and cgroup v1;
# without them it prints SKIPPED with the reason (a failure when CI=true).
# The kproxy binary is target/debug/kproxy (KPROXY=... for another).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
ALL=0
[[ ${1:-} == --all ]] && ALL=1

why=""
[[ $(id -u) == 0 ]] || why="needs root"
for tool in go containerd runc ctr gcc nsenter unshare openssl objcopy python3 curl; do
  [[ -n $why ]] || command -v $tool >/dev/null || why="needs $tool (scripts/install-deps.sh)"
done
[[ -n $why || -x /usr/lib/cni/ptp ]] || why="needs the CNI plugins in /usr/lib/cni (containernetworking-plugins)"
[[ -n $why || -d /sys/fs/cgroup/memory ]] || why="needs cgroup v1 hierarchies (kubelet's cgroupfs root is made in each)"
[[ -n $why || -x ${KPROXY:-$REPO/target/debug/kproxy} ]] || why="needs the kproxy binary (cargo build -p kproxy-bin)"
if [[ -n $why ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "e2e/node: $why, and CI must run the node tests"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (e2e/node)"
    exit 1
  fi
  echo "SKIPPED node: e2e/node/test.sh $why"
  exit 0
fi

# One node test run at a time on a machine (the cluster's paths,
# namespaces and ports are fixed): a second run waits for the first, and
# never touches its cluster. The lock is held by flock itself, so the
# daemons the run starts do not inherit it.
LOCK=/var/tmp/kproxy-node.lock
if [[ -z ${KPROXY_NODE_LOCKED:-} ]]; then
  export KPROXY_NODE_LOCKED=1
  flock -n "$LOCK" true || echo "e2e/node: another node test run holds $LOCK; waiting for it to end"
  exec flock -o "$LOCK" bash "${BASH_SOURCE[0]}" "$@"
fi

t=$SECONDS
K8S_BIN=$(bash "$REPO/e2e/k8s/build.sh" | tail -1) || exit 1
NODE_BIN=$(bash "$HERE/build.sh" | tail -1) || exit 1
export K8S_BIN NODE_BIN KEEP=1
echo "e2e/node: binaries ready in $((SECONDS - t)) s"
# The nodes' images, containers and logs go under /var/tmp: a disk about
# to fill is the first thing to know when pods never start.
echo "e2e/node: free space under /var/tmp: $(df -h --output=avail /var/tmp | tail -1 | tr -d ' '); memory available: $(awk '/MemAvailable/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"

status=0
down() { bash "$HERE/cluster.sh" down; }
up() {
  local t=$SECONDS rc=0
  bash "$HERE/cluster.sh" up || rc=$?
  if [[ $rc == 0 ]]; then
    echo "e2e/node: cluster of ${NODES:-2} nodes up in $((SECONDS - t)) s"
    return
  fi
  echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (e2e/node: cluster up)"
  # Status 3: a cluster this run did not start is in the way; leave it.
  [[ $rc == 3 ]] && trap - EXIT || down
  exit 1
}
trap down EXIT

RESULTS=${RESULTS:-/var/tmp/kproxy-node-results}
export RESULTS
rm -rf "$RESULTS"
CONFORMANCE='\[sig-network\] Services.*\[Conformance\]'

# conformance PROXY LABEL [FOCUS]: one run; kproxy's specs count as tests,
# upstream's are the reference.
conformance() {
  local proxy=$1 label=$2 line p f s
  local args=()
  [[ -n ${3:-} ]] && args=(--focus "$3")
  bash "$HERE/conformance.sh" "${args[@]}" "$proxy" | tee -a "$RESULTS/all.txt"
  line=$(grep "^conformance $proxy:" "$RESULTS/all.txt" | tail -1)
  read -r p f s <<<"$(sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/' <<<"$line")"
  echo "$proxy|$label|${p:-0}|${f:-1}|${s:-0}" >>"$RESULTS/table.txt"
  if [[ $proxy == kproxy-* ]]; then
    if [[ ${f:-1} == 0 && -n $p ]]; then
      echo "test result: ok. $p passed; 0 failed; $s ignored (conformance $proxy)"
    else
      echo "test result: FAILED. ${p:-0} passed; ${f:-1} failed; ${s:-0} ignored (conformance $proxy)"
      status=1
    fi
  fi
}

# Every spec upstream passed in a mode and kproxy ran, kproxy passed too.
compare() {
  local mode=$1 up=$RESULTS/upstream-$1/summary.txt kp=$RESULTS/kproxy-$1/summary.txt missing
  [[ -f $up && -f $kp ]] || return 0
  names() { sed -nE "s/^$1 +[0-9.]+s //p" "$2" | sort; }
  missing=$(comm -12 <(comm -23 <(names passed "$up") <(names passed "$kp")) <(names '[a-z]+' "$kp"))
  if [[ -z $missing ]]; then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored (kproxy passes every spec upstream passes, $mode mode)"
  else
    echo "e2e/node: upstream passed, kproxy did not ($mode mode):"
    echo "$missing"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (kproxy passes every spec upstream passes, $mode mode)"
    status=1
  fi
}

takeover() {
  if bash "$HERE/takeover.sh" "$1" | tee -a "$RESULTS/takeover.txt"; then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored (takeover on a real node, $1 mode)"
  else
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (takeover on a real node, $1 mode)"
    status=1
  fi
}

mkdir -p "$RESULTS"
up
if [[ $ALL == 1 ]]; then
  for proxy in upstream-nftables kproxy-nftables upstream-iptables kproxy-iptables kproxy-userspace; do
    conformance $proxy "Services (default set)"
  done
  takeover nftables
  takeover iptables
else
  conformance upstream-nftables "Services [Conformance]" "$CONFORMANCE"
  conformance kproxy-nftables "Services (default set)"
  conformance upstream-iptables "Services [Conformance]" "$CONFORMANCE"
  conformance kproxy-iptables "Services [Conformance]" "$CONFORMANCE"
  # Userspace mode (kube-proxy's old mode, which upstream no longer has):
  # the proxy forwards every connection itself.
  conformance kproxy-userspace "Services [Conformance]" "$CONFORMANCE"
  takeover nftables
fi
compare nftables
compare iptables
down
if [[ $ALL == 1 ]]; then
  # The spec that needs three nodes.
  NODES=3 up
  for proxy in upstream-nftables kproxy-nftables kproxy-iptables; do
    conformance $proxy "the 3-node HealthCheckNodePort spec" 'HealthCheckNodePort correctly when ExternalTrafficPolicy changes'
  done
  down
fi
trap - EXIT

echo
echo "| proxy | specs | passed | failed | skipped |"
echo "| --- | --- | --- | --- | --- |"
while IFS='|' read -r proxy label p f s; do
  echo "| $proxy | $label | $p | $f | $s |"
done <"$RESULTS/table.txt"
[[ -f $RESULTS/takeover.txt ]] && grep '^takeover' "$RESULTS/takeover.txt"
echo "e2e/node: done in $((SECONDS - t)) s"
exit $status
