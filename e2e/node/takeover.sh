#!/usr/bin/env bash
# A node taken over from upstream kube-proxy by kproxy on the running
# cluster, as an operator does it: upstream's DaemonSet is deleted and
# deploy/'s applied with kubectl, while a client pod holds one connection
# and opens new ones every 10 ms to a ClusterIP and to a NodePort of the
# other node.
#
# usage: takeover.sh MODE   (upstream kube-proxy and kproxy both in MODE;
#                            the cluster of cluster.sh must be up)
# Prints "takeover MODE: ..." with the failed new connections per target,
# whether the held connection survived, the seconds from kproxy's apply to
# its pods being ready and to upstream's leftovers being gone. Exits
# non-zero if a connection failed or the held one broke.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
C=$HERE/cluster.sh
MODE=${1:?usage: takeover.sh MODE}
NODES=${NODES:-2}
NS=kproxy-takeover-$$
kc() { "$C" kubectl "$@"; }
log() { echo "takeover.sh: $*" >&2; }

"$C" proxy-stop
"$C" upstream "$MODE"
kc create namespace $NS >/dev/null
trap 'kc delete namespace $NS --wait=false >/dev/null 2>&1 || true' EXIT
kc -n $NS apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: server}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.56
        args: [netexec, --http-port=8080]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  type: NodePort
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
EOF
kc -n $NS rollout status deploy/server --timeout=180s >/dev/null
ip=$(kc -n $NS get svc server -o jsonpath='{.spec.clusterIP}')
np=$(kc -n $NS get svc server -o jsonpath='{.spec.ports[0].nodePort}')
# The client runs on node1; the NodePort is reached on node2's address.
kc -n $NS apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node1
  containers:
  - name: client
    image: registry.k8s.io/e2e-test-images/agnhost:2.56
    command: [bash, -c]
    args:
    - |
      # First both targets must answer under upstream (the Service's
      # endpoints and upstream's rules settle after the pod starts): the
      # test judges the switch, not the set-up.
      until curl -s -m 2 -o /dev/null http://$ip/hostname && curl -s -m 2 -o /dev/null http://10.78.0.12:$np/hostname; do sleep 0.2; done
      touch /tmp/baseline
      # The held connection: one request every 200 ms on one keep-alive
      # connection; "%{num_connects}" is 1 only when curl had to connect.
      urls=(); for i in \$(seq 3000); do urls+=(http://$ip/hostname); done
      # (Bodies to /dev/null; the -w lines to stderr, kept in /tmp/held.)
      curl -s --rate 5/s -w '%{stderr}held %{num_connects} %{http_code} %{time_total} %{errormsg}\n' "\${urls[@]}" 2>/tmp/held >/dev/null &
      held=\$!
      while [ ! -e /tmp/stop ]; do
        for target in $ip:80 10.78.0.12:$np; do
          if curl -s -m 5 -o /dev/null http://\$target/hostname; then echo "new ok \$target"; else echo "new fail \$target \$EPOCHREALTIME \$?"; fi
        done
        sleep 0.01
      done
      kill \$held; cat /tmp/held; echo done; sleep 3600
EOF
kc -n $NS wait --for=condition=Ready pod/client --timeout=120s >/dev/null
for _ in $(seq 120); do kc -n $NS exec client -- test -e /tmp/baseline 2>/dev/null && break; sleep 1; done
sleep 5

# The switch, as an operator does it: upstream's DaemonSet deleted (its pods
# gone, their rules left in place), then kproxy's applied.
t0=$(date +%s.%N)
kc -n kube-system delete ds kube-proxy --cascade=foreground --wait=true --timeout=120s >/dev/null
"$C" kproxy "$MODE" >/dev/null &
applying=$!
# Serving: kproxy's first sync done on every node (its metrics answer on
# the node's 127.0.0.1:10249 once upstream's pods are gone).
synced() {
  local n
  for n in $(seq "$NODES"); do
    nsenter --net=/run/netns/kpn$n curl -s --max-time 1 http://127.0.0.1:10249/metrics 2>/dev/null \
      | grep -Eq '^kubeproxy_sync_proxy_rules_last_timestamp_seconds(\{ip_family="IPv4"\})? [1-9]' || return 1
  done
}
for _ in $(seq 1800); do synced && break; sleep 0.1; done
t1=$(date +%s.%N)
# Upstream's leftovers: its nftables table (in iptables mode its chains
# have the names kproxy's have, and kproxy rewrites them in its first sync).
leftover() {
  local n
  [[ $MODE == nftables ]] || return 1
  for n in $(seq "$NODES"); do
    nsenter --net=/run/netns/kpn$n nft list table ip kube-proxy >/dev/null 2>&1 && return 0
  done
  return 1
}
for _ in $(seq 600); do leftover || break; sleep 0.1; done
t2=$(date +%s.%N)
wait $applying
sleep 10
kc -n $NS exec client -- touch /tmp/stop
sleep 3
out=$(kc -n $NS logs client)
RESULTS=${RESULTS:-/var/tmp/kproxy-node-results}
mkdir -p "$RESULTS"
{ echo "switch began $t0, kproxy serving $t1, leftovers gone $t2"; echo "$out"; } >"$RESULTS/takeover-$MODE.log"
"$C" proxy-stop

ready=$(awk "BEGIN { print $t1 - $t0 }")
gone=$(awk "BEGIN { print $t2 - $t0 }")
fail_ip=$(grep -c "^new fail $ip:80" <<<"$out" || true)
fail_np=$(grep -c "^new fail 10.78.0.12:$np" <<<"$out" || true)
ok_ip=$(grep -c "^new ok $ip:80" <<<"$out" || true)
ok_np=$(grep -c "^new ok 10.78.0.12:$np" <<<"$out" || true)
held_total=$(grep -c '^held ' <<<"$out" || true)
held_reconnects=$(grep -c '^held 1 ' <<<"$out" || true)
held_errors=$(grep '^held ' <<<"$out" | grep -vc '^held [01] 200 ' || true)
printf 'takeover %s: ClusterIP %d of %d new connections failed, NodePort %d of %d; held connection: %d requests, %d reconnects, %d errors; kproxy serving %.1f s and upstream leftovers gone %.1f s after the switch began\n' \
  "$MODE" "$fail_ip" "$((fail_ip + ok_ip))" "$fail_np" "$((fail_np + ok_np))" "$held_total" \
  "$((held_reconnects - 1))" "$held_errors" "$ready" "$gone"
(( ok_ip > 100 && ok_np > 100 && held_total > 20 )) || { log "too little traffic to judge"; exit 1; }
(( fail_ip == 0 && fail_np == 0 && held_reconnects == 1 && held_errors == 0 ))
