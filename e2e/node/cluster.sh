#!/usr/bin/env bash
# A throwaway Kubernetes v1.34.4 cluster of real kubelet + containerd nodes,
# every process inside network namespaces made here; nothing is installed
# in the host's own network namespace and no traffic leaves these:
#   kpcp  etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
#         CoreDNS (no forward plugin) on bridge kpbr0, 10.78.0.1/24
#   kpnN  node N: containerd + kubelet (own UTS namespace, hostname nodeN),
#         10.78.0.1N, pods 10.244.N.0/24 (CNI ptp + host-local); N = 1..NODES
# Services 10.96.0.0/16. The service proxy runs as a DaemonSet: kproxy's
# from deploy/ (image built by scripts/image.py), or upstream kube-proxy's
# (kube-proxy.yaml here, same base image).
#
# usage: cluster.sh up | down | kproxy MODE | upstream MODE | proxy-stop |
#                   kubectl ARGS... | wait-proxy
#   MODE: nftables | iptables | ipvs (| userspace, kproxy only)
# env:   K8S_BIN (e2e/k8s/build.sh's output), NODE_BIN (e2e/node/build.sh's),
#        KPROXY (the kproxy binary, default target/debug/kproxy), NODES (2),
#        WORK (state, default /var/tmp/kproxy-node)
#
# 'up' exits with status 3, touching nothing, when another cluster is up.
#
# kubelet rewrites host-wide sysctls (vm.overcommit_memory, vm.panic_on_oom,
# kernel.panic, kernel.panic_on_oops): 'up' saves them and 'down' puts them
# back. 'down' stops only the processes 'up' started (by recorded PID),
# deletes the namespaces, unmounts and removes the state and the cgroups.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
K8S_BIN=${K8S_BIN:-$HOME/.cache/kproxy-e2e/bin-v1.34.4}
NODE_BIN=${NODE_BIN:-$HOME/.cache/kproxy-e2e/node-v1.34.4}
KPROXY=${KPROXY:-$REPO/target/debug/kproxy}
NODES=${NODES:-2}
WORK=${WORK:-/var/tmp/kproxy-node}
API=10.78.0.1
SVC_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops)
# Kept beside $WORK, not in it, so removing the state never loses them.
SYSCTL_SAVED=$WORK.sysctl
# The node count of the cluster that is up wins over NODES.
[[ ${1:-} == up || ! -f $WORK/nodes ]] || NODES=$(cat "$WORK/nodes")
case $WORK in /*kproxy*) ;; *) echo "cluster.sh: WORK must be an absolute path naming kproxy ($WORK)" >&2; exit 2 ;; esac

log() { echo "cluster.sh: $*" >&2; }
inns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" -- "$@"; }
kc() { inns kpcp "$K8S_BIN/kubectl" --kubeconfig "$WORK/admin.kubeconfig" "$@"; }
sock() { echo "/run/kproxy-node$1/containerd.sock"; }

# spawn NAME NS CMD...: CMD in network namespace NS, in the background, its
# output in $WORK/logs/NAME.log and its PID in $WORK/pids/NAME.
spawn() {
  local name=$1 ns=$2; shift 2
  setsid nsenter --net=/run/netns/"$ns" -- "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$WORK/pids/$name"
}

# stop NAME: the process recorded for NAME (TERM, then KILL after 10 s).
stop() {
  local f=$WORK/pids/$1 pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local limit=$1 what=$2 start=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start > limit )); then log "timed out after ${limit} s waiting for $what"; return 1; fi
    sleep 1
  done
  log "$what after $((SECONDS - start)) s"
}

kubeconfig() { # kubeconfig FILE TOKEN
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://$API:6443", certificate-authority: "$WORK/pki/ca.crt"}
users:
- name: u
  user: {token: "$2"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
EOF
}

pki() {
  local d=$WORK/pki n
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj /CN=kproxy-node-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$d/apiserver.key" -out "$d/apiserver.csr" -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' "$API" >"$d/ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -out "$d/apiserver.crt" -days 2 -extfile "$d/ext" 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" 2>/dev/null
  {
    echo "admin-token,admin,admin,\"system:masters\""
    for n in $(seq "$NODES"); do echo "node$n-token,system:node:node$n,node$n,\"system:nodes\""; done
  } >"$d/tokens.csv"
}

networks() {
  ip netns add kpcp
  ip -n kpcp link set lo up
  ip -n kpcp link add kpbr0 type bridge
  ip -n kpcp addr add $API/24 dev kpbr0
  ip -n kpcp link set kpbr0 up
  inns kpcp sysctl -qw net.ipv4.ip_forward=1
  local n m
  for n in $(seq "$NODES"); do
    ip netns add kpn$n
    ip -n kpn$n link set lo up
    ip -n kpcp link add n$n type veth peer name eth0 netns kpn$n
    ip -n kpcp link set n$n master kpbr0 up
    ip -n kpn$n addr add 10.78.0.1$n/24 dev eth0
    ip -n kpn$n link set eth0 up
    ip -n kpn$n route add default via $API
    ip -n kpcp route add 10.244.$n.0/24 via 10.78.0.1$n
    inns kpn$n sysctl -qw net.ipv4.ip_forward=1
  done
  for n in $(seq "$NODES"); do
    for m in $(seq "$NODES"); do
      [[ $n == "$m" ]] || ip -n kpn$n route add 10.244.$m.0/24 via 10.78.0.1$m
    done
  done
}

control_plane() {
  local p=$WORK/pki
  mkdir -p "$WORK/etcd"
  spawn etcd kpcp "$K8S_BIN/etcd" --name=kp --data-dir="$WORK/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=kp=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
  spawn kube-apiserver kpcp "$K8S_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=$API --advertise-address=$API --secure-port=6443 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
    --service-account-key-file="$p/sa.key" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --token-auth-file="$p/tokens.csv" --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range=$SVC_CIDR --service-node-port-range=30000-32767 --profiling=false \
    --kubelet-preferred-address-types=InternalIP --v=1
  wait_for 180 "kube-apiserver ready" inns kpcp curl -skf --max-time 2 https://$API:6443/readyz
  spawn kube-controller-manager kpcp "$NODE_BIN/kube-controller-manager" --kubeconfig="$WORK/admin.kubeconfig" \
    --authentication-kubeconfig="$WORK/admin.kubeconfig" --authorization-kubeconfig="$WORK/admin.kubeconfig" \
    --leader-elect=false --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=false --cluster-cidr=$CLUSTER_CIDR --allocate-node-cidrs=false \
    --service-cluster-ip-range=$SVC_CIDR --bind-address=127.0.0.1 --v=1
  spawn kube-scheduler kpcp "$NODE_BIN/kube-scheduler" --kubeconfig="$WORK/admin.kubeconfig" \
    --authentication-kubeconfig="$WORK/admin.kubeconfig" --authorization-kubeconfig="$WORK/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --v=1
  # Cluster DNS on the API server's address, outside the proxy under test;
  # no forward plugin, so no name outside cluster.local is ever sent on.
  cat >"$WORK/Corefile" <<EOF
.:53 {
    bind $API
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $WORK/admin.kubeconfig c
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
  spawn coredns kpcp "$NODE_BIN/coredns" -conf "$WORK/Corefile"
}

node() { # node N
  local n=$1 d=$WORK/node$1 st=/run/kproxy-node$1 img cg
  mkdir -p "$d"/{containerd,cni,ipam,kubelet,podlogs,certs,opt} "$st"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd"
state = "$st/containerd"
[grpc]
  address = "$st/containerd.sock"
[ttrpc]
  address = "$st/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj to kubelet's
  # -998 for sandboxes; clamp requests to containerd's own value instead.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$st/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
EOF
  cat >"$d/cni/10-kproxy-node.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kproxy-node", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1500,
   "ipam": {"type": "host-local", "dataDir": "$d/ipam",
            "ranges": [[{"subnet": "10.244.$n.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
  # Own UTS namespace with the node's name as hostname: hostNetwork pods
  # inherit containerd's, and the specs expect the node's name.
  spawn containerd$n kpn$n unshare --uts -- /bin/sh -c "hostname node$n && exec containerd --config '$d/containerd.toml'"
  wait_for 60 "containerd on node$n" ctr -a "$st/containerd.sock" version
  for img in "$WORK"/images/*.tar; do
    ctr -a "$st/containerd.sock" -n k8s.io images import "$img" >/dev/null
  done
  # kubelet's cgroupfs root for this node, in every cgroup v1 hierarchy.
  for cg in /sys/fs/cgroup/*/; do
    [[ -d $cg && $cg != */unified/ ]] && mkdir -p "${cg}kproxy-node$n"
  done
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /kproxy-node$n
failSwapOn: false
address: 10.78.0.1$n
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$st/containerd.sock
podLogsDir: $d/podlogs
clusterDomain: cluster.local
clusterDNS: [$API]
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
EOF
  kubeconfig "$d/kubelet.kubeconfig" node$n-token
  spawn kubelet$n kpn$n unshare --uts -- /bin/sh -c "hostname node$n && exec \"\$0\" \"\$@\"" \
    "$NODE_BIN/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
    --hostname-override=node$n --node-ip=10.78.0.1$n --root-dir="$d/kubelet" --cert-dir="$d/certs" --v=1
}

node_ready() {
  [[ $(kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# The images: kproxy's and upstream kube-proxy's (one base, built by
# scripts/image.py from Debian packages) and the specs' test images. All but
# kproxy's are kept between runs, under a key of their inputs.
images() {
  local bin=$WORK/images/bin key cache
  mkdir -p "$bin"
  key=$(cat "$NODE_BIN/.build-stamp" "$K8S_BIN/.build-stamp" "$HERE/images.py" "$REPO/scripts/image.py" \
    | sha256sum | cut -c1-16)
  cache=$HOME/.cache/kproxy-e2e/images-$key
  if [[ ! -f $cache/kube-proxy.tar ]]; then
    rm -rf "$HOME"/.cache/kproxy-e2e/images-*
    mkdir -p "$cache.tmp"
    python3 "$HERE/images.py" "$NODE_BIN" "$cache.tmp" >&2
    python3 "$REPO/scripts/image.py" --binary "$K8S_BIN/kube-proxy" --install-as /usr/local/bin/kube-proxy \
      --name localhost/kube-proxy:v1.34.4 --out "$cache.tmp/kube-proxy.tar" 2>/dev/null | sed 's/^/cluster.sh: /' >&2
    mv "$cache.tmp" "$cache"
  fi
  cp "$cache"/*.tar "$WORK/images/"
  # The debug build's debug information is not needed in a node's image.
  objcopy --strip-debug "$KPROXY" "$bin/kproxy"
  python3 "$REPO/scripts/image.py" --binary "$bin/kproxy" --name "$(kproxy_image)" \
    --out "$WORK/images/kproxy.tar" 2>/dev/null | sed 's/^/cluster.sh: /' >&2
}

kproxy_image() { python3 "$REPO/scripts/image.py" --print-name; }

cmd_up() {
  # Exit status 3: another cluster is in the way, which is not ours to
  # take down.
  [[ ! -e $WORK/pids ]] || { log "a cluster is already up in $WORK (cluster.sh down first)"; exit 3; }
  [[ ! -e /run/netns/kpcp ]] || { log "namespace kpcp exists (cluster.sh down first)"; exit 3; }
  mkdir -p "$WORK"/{logs,pids,images}
  echo "$NODES" >"$WORK/nodes"
  local t=$SECONDS s n
  [[ -f $SYSCTL_SAVED ]] || for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$SYSCTL_SAVED"
  ip netns list | awk '{print $1}' | sort >"$WORK/netns.before"
  images
  pki
  kubeconfig "$WORK/admin.kubeconfig" admin-token
  networks
  control_plane
  for n in $(seq "$NODES"); do node "$n"; done
  for n in $(seq "$NODES"); do wait_for 180 "node$n Ready" node_ready node$n; done
  wait_for 60 "the default service account" kc get serviceaccount default
  log "cluster up in $((SECONDS - t)) s"
}

# Both proxies' DaemonSets get the API server's real address: before a
# proxy runs, nothing on a node serves the kubernetes Service's ClusterIP.
api_configmap() {
  kc -n kube-system create configmap "$1" --from-literal=host=$API --from-literal=port=6443 \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
}

cmd_kproxy() { # kproxy MODE: deploy/ as an operator applies it
  local mode=$1
  api_configmap kproxy-apiserver
  kc apply -f "$REPO/deploy/rbac.yaml" >/dev/null
  # The node's conntrack table size and hash size are host-wide settings
  # here (the nodes share the host's kernel): leave them alone.
  sed -e "s/^    mode: .*/    mode: $mode/" -e 's/maxPerCore: .*/maxPerCore: 0/' \
    "$REPO/deploy/configmap.yaml" | kc apply -f - >/dev/null
  sed -e "s#image: kproxy:.*#image: $(kproxy_image)#" "$REPO/deploy/daemonset.yaml" | kc apply -f - >/dev/null
  echo "kproxy-$mode" >"$WORK/proxy"
  cmd_wait_proxy kproxy
}

cmd_upstream() { # upstream MODE
  local mode=$1
  api_configmap kube-proxy-apiserver
  sed -e "s/@MODE@/$mode/" "$HERE/kube-proxy.yaml" | kc apply -f - >/dev/null
  echo "upstream-$mode" >"$WORK/proxy"
  cmd_wait_proxy kube-proxy
}

# wait-proxy [NAME]: every node has a ready pod of the DaemonSet.
cmd_wait_proxy() {
  local ds=${1:-$(proxy_ds)}
  wait_for 180 "DaemonSet $ds ready on $NODES nodes" ds_ready "$ds" || {
    kc -n kube-system get pods -o wide >&2 || true
    kc -n kube-system logs "ds/$ds" --tail=30 >&2 || true
    why_not_running
    return 1
  }
}

# Why pods are not running (for a stuck ContainerCreating): the newest
# events, the state directory's free space and each node's newest kubelet
# and containerd errors.
why_not_running() {
  local n
  log "the newest events:"
  kc get events -A --sort-by=.lastTimestamp 2>&1 | tail -15 >&2 || true
  log "free space: $(df -h --output=avail,pcent "$WORK" 2>/dev/null | tail -1)"
  log "inotify instances open: $(find /proc/[0-9]*/fd -lname 'anon_inode:inotify' 2>/dev/null | wc -l) of $(sysctl -n fs.inotify.max_user_instances) per user; processes: $(ls -d /proc/[0-9]* | wc -l)"
  for n in $(seq "$NODES"); do
    log "node$n's newest kubelet and containerd errors:"
    grep -hE '^E[0-9]{4}|level=error' "$WORK/logs/kubelet$n.log" "$WORK/logs/containerd$n.log" 2>/dev/null | tail -5 | cut -c1-400 >&2 || true
  done
}

ds_ready() {
  [[ $(kc -n kube-system get ds "$1" -o jsonpath='{.status.numberReady}') == "$NODES" ]]
}

proxy_ds() { case $(cat "$WORK/proxy" 2>/dev/null) in kproxy-*) echo kproxy ;; upstream-*) echo kube-proxy ;; esac; }

# proxy-stop: delete the proxy's DaemonSet, wait for its pods to go, then
# remove what it left in each node's namespace with both binaries' --cleanup.
cmd_proxy_stop() {
  local ds n
  ds=$(proxy_ds)
  [[ -n $ds ]] || return 0
  kc -n kube-system delete ds "$ds" --wait=true --timeout=120s >/dev/null 2>&1 || true
  wait_for 120 "the $ds pods gone" no_pods "$ds" || true
  for n in $(seq "$NODES"); do
    inns kpn$n "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    inns kpn$n "$KPROXY" --cleanup >/dev/null 2>&1 || true
  done
  rm -f "$WORK/proxy"
}

no_pods() { [[ -z $(kc -n kube-system get pods -l "k8s-app=$1" -o name; kc -n kube-system get pods -l "app=$1" -o name) ]]; }

cmd_down() {
  local n s t
  if [[ -f $WORK/pids/kube-apiserver ]]; then
    # Test namespaces first, so kubelet tears their pods down (CNI DEL).
    kc get ns -o name 2>/dev/null | grep -v -E '/(default|kube-system|kube-public|kube-node-lease)$' \
      | xargs -r timeout 120 nsenter --net=/run/netns/kpcp -- "$K8S_BIN/kubectl" \
        --kubeconfig "$WORK/admin.kubeconfig" delete --wait=true >/dev/null 2>&1 || true
  fi
  for n in $(seq "$NODES"); do
    stop kubelet$n
    s=$(sock "$n")
    if [[ -S $s ]]; then
      for t in $(ctr -a "$s" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr -a "$s" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
      sleep 1
      for t in $(ctr -a "$s" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr -a "$s" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
      done
    fi
    stop containerd$n
  done
  for s in coredns kube-scheduler kube-controller-manager kube-apiserver etcd; do stop $s; done
  if [[ -f $SYSCTL_SAVED ]]; then
    while read -r s; do sysctl -qw "$s" || true; done <"$SYSCTL_SAVED"
    rm -f "$SYSCTL_SAVED"
  fi
  # The pod sandboxes' cni-* namespaces made since 'up', then ours.
  if [[ -f $WORK/netns.before ]]; then
    for s in $(ip netns list | awk '{print $1}' | sort | comm -13 "$WORK/netns.before" -); do
      [[ $s == cni-* ]] && ip netns delete "$s" 2>/dev/null || true
    done
  fi
  for s in kpcp $(seq -f 'kpn%g' 9); do ip netns delete "$s" 2>/dev/null || true; done
  # What kubelet and containerd mounted (kubelet's root, projected volumes,
  # sandbox shm), deepest first, before the state goes.
  for n in 1 2 3 4 5; do
    grep -E " ($WORK|/run/kproxy-node[0-9])[/ ]" /proc/mounts | awk '{print $2}' | sort -r \
      | xargs -r -n1 umount -l 2>/dev/null || true
  done
  for n in $(seq 9); do
    for t in 1 2 3 4 5; do
      for s in /sys/fs/cgroup/*/kproxy-node$n; do
        [[ -d $s ]] && find "$s" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      done
      compgen -G "/sys/fs/cgroup/*/kproxy-node$n" >/dev/null || break
      sleep 1
    done
    rm -rf "/run/kproxy-node$n"
  done
  rm -rf "$WORK"
  log "down"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  kproxy) cmd_kproxy "${2:?MODE}" ;;
  upstream) cmd_upstream "${2:?MODE}" ;;
  proxy-stop) cmd_proxy_stop ;;
  wait-proxy) cmd_wait_proxy "${2:-}" ;;
  kubectl) shift; kc "$@" ;;
  *) echo "usage: $0 up | down | kproxy MODE | upstream MODE | proxy-stop | wait-proxy | kubectl ARGS..." >&2; exit 2 ;;
esac
