//! etcd and kube-apiserver in a private network namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kproxy_testkit::{run, Netns};

use crate::api::Api;
use crate::binaries::Binaries;

/// The API server's address, on the control plane's bridge.
pub const API_IP: &str = "198.18.0.1";
/// The API server's port.
pub const API_PORT: u16 = 6443;
/// The bridge every node namespace is attached to.
const BRIDGE: &str = "kpe0";

/// Static tokens: (token, user, groups).
const TOKENS: [(&str, &str, &str); 3] = [
    ("e2e-admin-token", "e2e-admin", "system:masters"),
    ("e2e-kproxy-token", "kproxy", ""),
    ("e2e-kube-proxy-token", "system:kube-proxy", ""),
];

/// Service CIDRs the scenarios' ClusterIPs come from.
pub const SERVICE_CIDRS: &str = "172.30.0.0/16,fd00:172:30::/112";

/// A running control plane. Dropping it stops etcd and the API server (by
/// PID), removes the namespace and the working directory.
#[derive(Debug)]
pub struct ControlPlane {
    ns: Netns,
    dir: PathBuf,
    bins: Binaries,
    apiserver: Option<usize>,
    attached: u8,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API is ready;
    /// binds the `kproxy` user to `deploy/rbac.yaml`'s ClusterRole and
    /// upstream's `system:kube-proxy` to `system:node-proxier`.
    pub fn start(bins: &Binaries) -> Result<ControlPlane, String> {
        let ns = Netns::new("cp")?;
        let dir = std::env::temp_dir().join(format!("kproxy-e2e-{}-{}", std::process::id(), ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).map_err(|e| e.to_string())?;
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{API_IP}/24"), "dev", BRIDGE])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        let key = dir.join("sa.key");
        run(&["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key.to_string_lossy()])?;
        let tokens: String = TOKENS.iter().map(|(t, u, g)| format!("{t},{u},{u},\"{g}\"\n")).collect();
        write(&dir.join("tokens.csv"), &tokens)?;
        let mut cp = ControlPlane { ns, dir, bins: bins.clone(), apiserver: None, attached: 1 };
        let etcd_dir = cp.dir.join("etcd");
        let etcd = cp.bins.path("etcd");
        let etcd_args = [
            etcd.as_str(),
            "--name=e2e",
            &format!("--data-dir={}", etcd_dir.display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=e2e=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ];
        let log = cp.dir.join("etcd.log");
        cp.ns.spawn_logged(&etcd_args, &log)?;
        cp.start_apiserver()?;
        let admin = cp.admin()?;
        admin.apply(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "e2e-kproxy"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kproxy"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kproxy"}],
        }))?;
        admin.apply_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml"))?;
        admin.apply(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "e2e-kube-proxy"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-proxy"}],
        }))?;
        Ok(cp)
    }

    fn start_apiserver(&mut self) -> Result<(), String> {
        let d = self.dir.display();
        let apiserver = self.bins.path("kube-apiserver");
        let args = [
            apiserver.as_str(),
            "--etcd-servers=http://127.0.0.1:2379",
            &format!("--bind-address={API_IP}"),
            &format!("--advertise-address={API_IP}"),
            &format!("--secure-port={API_PORT}"),
            &format!("--cert-dir={d}/certs"),
            &format!("--service-account-key-file={d}/sa.key"),
            &format!("--service-account-signing-key-file={d}/sa.key"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--token-auth-file={d}/tokens.csv"),
            "--authorization-mode=RBAC",
            &format!("--service-cluster-ip-range={SERVICE_CIDRS}"),
            "--service-node-port-range=3000-32767",
            "--profiling=false",
            "--v=1",
        ];
        let log = self.dir.join("kube-apiserver.log");
        self.apiserver = Some(self.ns.spawn_logged(&args, &log)?);
        self.wait_ready(Duration::from_secs(90))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let url = format!("https://{API_IP}:{API_PORT}/readyz");
        let start = Instant::now();
        loop {
            if self.ns.exec(&["curl", "-skf", "--max-time", "2", &url]).is_ok_and(|o| o.trim() == "ok") {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("kube-apiserver not ready after {timeout:?}: {}", tail.join(" | ")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the API server (SIGKILL), and starts it again once `down`
    /// has passed; etcd keeps the state.
    pub fn restart_apiserver(&mut self, down: Duration) -> Result<(), String> {
        if let Some(h) = self.apiserver.take() {
            self.ns.kill(h);
        }
        std::thread::sleep(down);
        self.start_apiserver()
    }

    /// Compacts etcd's history up to now, so a watch resuming from any
    /// earlier resourceVersion gets `410 Gone` and must list again.
    pub fn compact_etcd(&self) -> Result<(), String> {
        let url = "http://127.0.0.1:2379/v3";
        let range = self.ns.exec(&["curl", "-sf", "-X", "POST", &format!("{url}/kv/range"), "-d", r#"{"key":"AA=="}"#])?;
        let doc: serde_json::Value = serde_json::from_str(&range).map_err(|e| format!("etcd range: {e}: {range}"))?;
        let revision = doc["header"]["revision"].as_str().ok_or_else(|| format!("no revision in {range}"))?.to_string();
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        self.ns.exec(&["curl", "-sf", "-X", "POST", &format!("{url}/kv/compaction"), "-d", &body])?;
        Ok(())
    }

    /// Connects a node namespace to the control plane's bridge; returns
    /// the node's address there.
    pub fn attach(&mut self, node: &Netns) -> Result<String, String> {
        self.attached += 1;
        let n = self.attached;
        let (outer, inner) = (format!("kpe{n}"), "kpapi0");
        self.ns.ip(&["link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", node.name()])?;
        self.ns.ip(&["link", "set", &outer, "master", BRIDGE, "up"])?;
        let addr = format!("198.18.0.{n}");
        node.ip(&["addr", "add", &format!("{addr}/24"), "dev", inner])?;
        node.ip(&["link", "set", inner, "up"])?;
        Ok(addr)
    }

    /// A kubeconfig for `user` (`kproxy`, `system:kube-proxy` or
    /// `e2e-admin`), written to the working directory; returns its path.
    pub fn kubeconfig(&self, user: &str) -> Result<PathBuf, String> {
        let token = TOKENS.iter().find(|(_, u, _)| *u == user).ok_or_else(|| format!("no token for {user}"))?.0;
        let path = self.dir.join(format!("kubeconfig-{}", user.replace(':', "-")));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://{API_IP}:{API_PORT}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: u\ncurrent-context: e2e\n"
        );
        write(&path, &text)?;
        Ok(path)
    }

    /// An admin client (runs inside the control plane's namespace).
    pub fn admin(&self) -> Result<Api, String> {
        Api::connect(self.ns.name(), &self.kubeconfig("e2e-admin")?)
    }

    /// The working directory (logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control plane's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The API server's PID, while it runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.and_then(|h| self.ns.pid(h))
    }

    /// Bytes sent so far from the control plane to every attached node (the
    /// bridge ports' transmit counters): the API server's answers, TLS
    /// included, as the nodes' links carry them.
    pub fn bytes_to_nodes(&self) -> Result<u64, String> {
        let out = self.ns.ip(&["-s", "-j", "link", "show"])?;
        let links: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("ip -s -j link: {e}"))?;
        let ports = links.as_array().into_iter().flatten().filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("kpe") && n != BRIDGE));
        Ok(ports.filter_map(|l| l["stats64"]["tx"]["bytes"].as_u64()).sum())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The namespace's Drop stops the processes; keep the logs of a
        // failed run for a moment's inspection only if asked.
        if std::env::var("KPROXY_E2E_KEEP_LOGS").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
