#!/usr/bin/env bash
# kproxy's main job, for real, on the bundled example cluster
# (examples/cluster): builds kproxy, makes a private node network namespace
# with pods serving HTTP and an outside client, runs kproxy there with the
# nftables backend, and curls a ClusterIP, a NodePort, an external IP and
# a Service without endpoints. Exits non-zero if any answer is not the one
# expected (scripts/test.sh runs it). Needs root. It touches only
# namespaces it creates, and removes them (and stops kproxy) when it ends,
# also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
for tool in ip nft curl python3; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is missing (bash scripts/install-deps.sh installs it)" >&2; exit 1; }
done

cargo build -q -p kproxy-bin
KPROXY=target/debug/kproxy
P="kpdemo$$"
NODE="$P-node"; CLIENT="$P-client"
KPROXY_PID=""
SERVERS=()
cleanup() {
    [ -n "$KPROXY_PID" ] && kill "$KPROXY_PID" 2>/dev/null || true
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
}
[ -n "${KPROXY_DEMO_KEEP:-}" ] || trap cleanup EXIT

ns() { ip netns add "$1"; ip -n "$1" link set lo up; }
ns "$NODE"; ns "$CLIENT"
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0
# The node's uplink to an outside client.
ip -n "$NODE" link add eth0 type veth peer name eth0 netns "$CLIENT"
ip -n "$NODE" addr add 192.168.50.2/24 dev eth0; ip -n "$NODE" link set eth0 up
ip -n "$CLIENT" addr add 192.168.50.100/24 dev eth0; ip -n "$CLIENT" link set eth0 up
ip -n "$CLIENT" route add 10.96.0.0/16 via 192.168.50.2
ip -n "$CLIENT" route add 192.0.2.10/32 via 192.168.50.2

# Pods: routed veths, each answering HTTP with its own name.
i=0
for pod in web-a:10.244.1.10:8080 web-b:10.244.1.11:8080 api:10.244.1.20:8080 metrics:10.244.1.91:9100; do
    IFS=: read -r name ip port <<<"$pod"
    ns "$P-$name"
    ip -n "$NODE" link add "v$i" type veth peer name eth0 netns "$P-$name"
    ip -n "$NODE" addr add 10.244.1.1/32 dev "v$i"; ip -n "$NODE" link set "v$i" up
    ip -n "$NODE" route add "$ip/32" dev "v$i"
    ip -n "$P-$name" addr add "$ip/32" dev eth0; ip -n "$P-$name" link set eth0 up
    ip -n "$P-$name" route add 10.244.1.1 dev eth0; ip -n "$P-$name" route add default via 10.244.1.1
    ip netns exec "$P-$name" python3 -c "
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('hello from pod $name ($ip), you came from %s\n' % self.client_address[0]).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(('0.0.0.0', $port), H).serve_forever()" &
    SERVERS+=("$!")
    i=$((i + 1))
done

# Wait until every pod answers directly.
for ep in 10.244.1.10:8080 10.244.1.11:8080 10.244.1.20:8080 10.244.1.91:9100; do
    for _ in $(seq 100); do ip netns exec "$NODE" curl -s -o /dev/null --max-time 1 "http://$ep/" && break; sleep 0.1; done
done

# -v=2: kproxy logs a summary of each sync, as upstream kube-proxy does.
ip netns exec "$NODE" "$KPROXY" --proxy-mode nftables --hostname-override node-a \
    --cluster-cidr 10.244.0.0/16 --manifests examples/cluster -v=2 2> "/tmp/$P-kproxy.log" &
KPROXY_PID=$!
for _ in $(seq 100); do grep -q '"synced"' "/tmp/$P-kproxy.log" && break; sleep 0.1; done
echo "kproxy is running (pid $KPROXY_PID); its first sync:"
grep '"synced"' "/tmp/$P-kproxy.log" | head -1 || { echo "demo: kproxy never synced; its log:" >&2; cat "/tmp/$P-kproxy.log" >&2; exit 1; }

failed=0
expect() { # expect WHAT PATTERN OUTPUT: says whether the answer was the one expected
    if grep -q "$2" <<<"$3"; then echo "$3"; else echo "demo: FAILED: $1: got ${3:-nothing}" >&2; failed=1; fi
}
echo; echo "\$ curl http://10.96.0.10/          # ClusterIP of demo/web, two pods"
for _ in 1 2 3 4; do expect "ClusterIP" "hello from pod web-" "$(ip netns exec "$CLIENT" curl -sS --max-time 5 http://10.96.0.10/ 2>&1)"; done
echo; echo "\$ curl http://192.168.50.2:30080/  # NodePort of demo/api"
expect "NodePort" "hello from pod api" "$(ip netns exec "$CLIENT" curl -sS --max-time 5 http://192.168.50.2:30080/ 2>&1)"
echo; echo "\$ curl http://192.0.2.10:9100/     # external IP of demo/metrics"
expect "external IP" "hello from pod metrics" "$(ip netns exec "$CLIENT" curl -sS --max-time 5 http://192.0.2.10:9100/ 2>&1)"
echo; echo "\$ curl http://10.96.0.40/          # demo/pending has no endpoints: refused at once"
code=0; ip netns exec "$CLIENT" curl -s --max-time 5 http://10.96.0.40/ || code=$?
expect "no endpoints" "exit 7" "(connection refused, exit $code)"
rm -f "/tmp/$P-kproxy.log"
if [ "$failed" = 0 ]; then echo; echo "demo: every answer as expected"; fi
exit "$failed"
