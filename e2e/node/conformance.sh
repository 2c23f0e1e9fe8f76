#!/usr/bin/env bash
# Kubernetes' own [sig-network] Services specs (k8s.io/kubernetes v1.34.4,
# test/e2e/network through upstream's e2e framework, unmodified) against the
# node harness's cluster, once per PROXY given, each deployed as a
# DaemonSet (cluster.sh kproxy MODE / upstream MODE).
#
# usage: conformance.sh [--focus RE] [--skip RE] PROXY...
#   PROXY: kproxy-nftables | kproxy-iptables | kproxy-ipvs | kproxy-userspace |
#          upstream-nftables | upstream-iptables | upstream-ipvs
#   --focus  default '\[sig-network\] Services'
#   --skip   default: the specs a two-node cluster without a cloud, SCTP,
#            alpha/beta features or disruption can run (DEFAULT_SKIP)
# env: PROCS (parallel ginkgo processes, default 4), NODES (2; 3 runs the
#      HealthCheckNodePort spec that needs three), RESULTS (where reports
#      go, default /var/tmp/kproxy-node-results), KEEP=1 (leave the cluster up);
#      and cluster.sh's.
# Brings the cluster up unless one is up, and down at the end unless KEEP=1.
# Prints, per PROXY, its specs and "conformance PROXY: P passed, F failed,
# S skipped in T s"; exits non-zero if a spec failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
C=$HERE/cluster.sh
FOCUS='\[sig-network\] Services'
DEFAULT_SKIP='\[Slow\]|\[Serial\]|\[Disruptive\]|\[Flaky\]|DNS|ExternalName|LoadBalancer|\[Feature:|\[FeatureGate:|\[Alpha\]|\[Beta\]|SCTP'
SKIP=$DEFAULT_SKIP
while [[ ${1:-} == --* ]]; do
  case $1 in
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    *) echo "conformance.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
(( $# > 0 )) || { echo "usage: conformance.sh [--focus RE] [--skip RE] PROXY..." >&2; exit 2; }
K8S_BIN=${K8S_BIN:-$HOME/.cache/kproxy-e2e/bin-v1.34.4}
NODE_BIN=${NODE_BIN:-$HOME/.cache/kproxy-e2e/node-v1.34.4}
WORK=${WORK:-/var/tmp/kproxy-node}
RESULTS=${RESULTS:-/var/tmp/kproxy-node-results}
PROCS=${PROCS:-4}
export K8S_BIN NODE_BIN WORK
[[ ! -f $WORK/nodes ]] || NODES=$(cat "$WORK/nodes")

if [[ ! -f $WORK/pids/kube-apiserver ]]; then
  [[ ${KEEP:-0} == 1 ]] || trap '"$C" down' EXIT
  "$C" up
fi
status=0
for proxy in "$@"; do
  t=$SECONDS
  "$C" proxy-stop
  "$C" "${proxy%%-*}" "${proxy#*-}"
  res=$RESULTS/$proxy
  rm -rf "$res"; mkdir -p "$res"
  set +e
  (cd "$res" && nsenter --net=/run/netns/kpcp -- "$NODE_BIN/ginkgo" --procs="$PROCS" \
    --focus="$FOCUS" --skip="$SKIP" --json-report="$res/report.json" --no-color --timeout=2h \
    "$NODE_BIN/suite.test" -- --kubeconfig="$WORK/admin.kubeconfig" --kubectl-path="$K8S_BIN/kubectl" \
    --provider=local --report-dir="$res" --e2e-output-dir="$res" --allowed-not-ready-nodes=0 \
    --minStartupPods=0 --node-schedulable-timeout=2m --num-nodes="${NODES:-2}") >"$res/e2e.log" 2>&1
  rc=$?
  set -e
  "$C" kubectl -n kube-system logs -l app=kproxy --tail=-1 --prefix >"$res/proxy.log" 2>&1 || true
  "$C" kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=-1 --prefix >>"$res/proxy.log" 2>&1 || true
  "$C" proxy-stop
  if [[ -f $res/report.json ]]; then
    python3 "$HERE/summary.py" "$res/report.json" | tee "$res/summary.txt" | sed '$d'
    line=$(tail -1 "$res/summary.txt")
  else
    tail -20 "$res/e2e.log"
    line="0 passed, 1 failed, 0 skipped (no report; ginkgo exit $rc)"
  fi
  echo "conformance $proxy: $line in $((SECONDS - t)) s (results in $res)"
  [[ $line == *" 0 failed"* && $rc == 0 ]] || status=1
done
exit $status
