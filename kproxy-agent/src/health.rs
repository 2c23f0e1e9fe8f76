//! Health, as kube-proxy reports it: the proxy health server's answer
//! (`/healthz`, `/livez`) from every family's [`SyncHealth`] and the
//! node's eligibility, and the health-check NodePorts of
//! `externalTrafficPolicy: Local` Services, which load balancers probe.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hyper::StatusCode;
use kproxy_core::runner::SyncHealth;
use kproxy_core::{HealthCheck, IpFamily, NamespacedName};
use tokio::net::TcpListener;

use crate::http::{not_found, reply, serve, Reply, ServeError};

/// The proxy's health: one signal per proxier (with its IP family) and
/// whether the node may receive traffic.
#[derive(Debug)]
pub struct ProxyHealth {
    healths: Vec<(IpFamily, Arc<SyncHealth>)>,
    node_eligible: AtomicBool,
}

impl ProxyHealth {
    /// The health of proxiers with these signals (see
    /// [`FanOut::healths`](crate::fanout::FanOut::healths)), on an
    /// eligible node.
    pub fn new(healths: Vec<(IpFamily, Arc<SyncHealth>)>) -> ProxyHealth {
        ProxyHealth { healths, node_eligible: AtomicBool::new(true) }
    }

    /// Each family's signal.
    pub fn healths(&self) -> &[(IpFamily, Arc<SyncHealth>)] {
        &self.healths
    }

    /// Sets whether the node may receive traffic (false while it is being
    /// deleted: `/healthz` then fails; see [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }

    /// Whether every family has synced at least once.
    pub fn all_synced(&self) -> bool {
        let now = tokio::time::Instant::now();
        self.healths.iter().all(|(_, h)| h.snapshot(now).last_updated.is_some())
    }

    /// The health answer, as upstream's `ProxyHealthServer`: status and
    /// JSON body. `with_node` adds node eligibility (`/healthz`); `/livez`
    /// ignores it. The body's `healthy` is the proxiers' alone; a node
    /// that is not eligible turns only the status to 503.
    pub fn answer(&self, with_node: bool) -> (StatusCode, String) {
        let now_tokio = tokio::time::Instant::now();
        let quote = |t: String| serde_json::Value::String(t).to_string();
        let mut status = Vec::new();
        let mut synced = true;
        let mut last: Option<SystemTime> = None;
        let mut families: Vec<_> = self.healths.iter().collect();
        families.sort_by_key(|(f, _)| f.to_string());
        for (family, h) in families {
            let snapshot = h.snapshot(now_tokio);
            synced &= snapshot.healthy;
            if let Some(updated) = snapshot.last_updated {
                last = last.max(Some(updated));
                status.push(format!("{}:{{\"lastUpdated\":{},\"healthy\":{}}}", quote(family.to_string()), quote(go_time(updated)), snapshot.healthy));
            }
        }
        let eligible = self.node_eligible.load(Ordering::Relaxed);
        let ok = synced && (!with_node || eligible);
        let now = SystemTime::now();
        // As upstream: a healthy answer reports "now" as the last update.
        let last = if ok { go_time(now) } else { last.map_or_else(|| GO_ZERO_TIME.to_string(), go_time) };
        // Upstream's field order: lastUpdated, currentTime, nodeEligible
        // (`/healthz` only), healthy, status (once a family has synced).
        let mut body = format!("{{\"lastUpdated\":{},\"currentTime\":{}", quote(last), quote(go_time(now)));
        if with_node {
            body.push_str(&format!(",\"nodeEligible\":{eligible}"));
        }
        body.push_str(&format!(",\"healthy\":{synced}"));
        if !status.is_empty() {
            body.push_str(&format!(",\"status\":{{{}}}", status.join(",")));
        }
        body.push('}');
        let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (code, body)
    }
}

/// Go's zero `time.Time` in JSON.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Go's JSON form of a `time.Time` (RFC 3339 with nanoseconds, trailing
/// zeros trimmed), which upstream's health bodies carry.
fn go_time(t: SystemTime) -> String {
    let ts = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| k8s_openapi::jiff::Timestamp::new(d.as_secs() as i64, d.subsec_nanos() as i32).ok());
    ts.map(|ts| ts.to_string()).unwrap_or_else(|| GO_ZERO_TIME.into())
}

/// Whether a node may receive traffic, as upstream decides for `/healthz`:
/// not being deleted, and not tainted `ToBeDeletedByClusterAutoscaler`
/// (the taint's key alone counts). A node never seen is not eligible.
pub fn node_eligible(node: Option<&k8s_openapi::api::core::v1::Node>) -> bool {
    node.is_some_and(|n| {
        n.metadata.deletion_timestamp.is_none()
            && !n.spec.iter().flat_map(|s| s.taints.iter().flatten()).any(|t| t.key == "ToBeDeletedByClusterAutoscaler")
    })
}

/// Serves the proxy health server (`/healthz`, `/livez`) of `health` on
/// `addr` (see [`serve`] for `hard_fail`); `answered(with_node, status)`
/// is called for every answer (upstream counts them in its metrics).
pub async fn serve_health<F>(addr: SocketAddr, health: Arc<ProxyHealth>, hard_fail: bool, answered: F) -> Result<tokio::task::JoinHandle<()>, ServeError>
where
    F: Fn(bool, StatusCode) + Send + Sync + 'static,
{
    serve("Healthz", addr, hard_fail, move |path| {
        let with_node = match path {
            "/healthz" => true,
            "/livez" => false,
            _ => return not_found(),
        };
        let (status, body) = health.answer(with_node);
        answered(with_node, status);
        reply(status, "application/json", body)
    })
    .await
}

/// Which Service a health-check port answers for, with its number of
/// local endpoints.
type PortTable = Arc<Mutex<BTreeMap<u16, (NamespacedName, usize)>>>;

/// The health-check NodePort servers of `externalTrafficPolicy: Local`
/// Services: one listener per port, started and stopped as Services come
/// and go, answering 200 when the node has a ready endpoint and the proxy
/// is healthy (with upstream's body and `X-Load-Balancing-Endpoint-Weight`).
/// Feed it every sync report's health checks
/// ([`SyncHooks::reported`](crate::observer::SyncHooks::reported)).
#[derive(Debug)]
pub struct HealthCheckServers {
    proxy: Arc<ProxyHealth>,
    /// Each family's latest report; the servers serve their union.
    per_family: Mutex<BTreeMap<IpFamily, BTreeMap<NamespacedName, HealthCheck>>>,
    ports: PortTable,
    tasks: Mutex<BTreeMap<u16, tokio::task::JoinHandle<()>>>,
    /// The addresses to listen on (`None`: every address).
    addresses: Option<Vec<IpAddr>>,
}

impl HealthCheckServers {
    /// No servers yet. They will listen on `addresses` (the NodePort
    /// addresses; `None` for every address; none at all for an empty
    /// list, as upstream).
    pub fn new(proxy: Arc<ProxyHealth>, addresses: Option<Vec<IpAddr>>) -> Self {
        HealthCheckServers { proxy, per_family: Mutex::default(), ports: Arc::default(), tasks: Mutex::default(), addresses }
    }

    /// Records `family`'s checks after its sync and makes the running
    /// servers match every family's. A Service in both families counts its
    /// larger number of local endpoints (a dual-stack pod is one pod).
    pub fn update(&self, family: IpFamily, checks: &BTreeMap<NamespacedName, HealthCheck>) {
        let merged: BTreeMap<NamespacedName, HealthCheck> = {
            let mut per_family = self.per_family.lock().unwrap_or_else(|e| e.into_inner());
            per_family.insert(family, checks.clone());
            let mut merged: BTreeMap<NamespacedName, HealthCheck> = BTreeMap::new();
            for (service, check) in per_family.values().flatten() {
                let entry = merged.entry(service.clone()).or_insert(*check);
                entry.local_endpoints = entry.local_endpoints.max(check.local_endpoints);
            }
            merged
        };
        let mut wanted: BTreeMap<u16, (NamespacedName, usize)> = BTreeMap::new();
        for (service, check) in &merged {
            if let Some((owner, _)) = wanted.get(&check.port) {
                tracing::warn!(service = %service, owner = %owner, port = check.port, "health-check NodePort already used; skipping");
                continue;
            }
            wanted.insert(check.port, (service.clone(), check.local_endpoints));
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for &port in wanted.keys() {
            if tasks.contains_key(&port) {
                continue;
            }
            match self.listen(port) {
                Ok(task) => {
                    tasks.insert(port, task);
                }
                Err(e) => tracing::warn!(port, error = %e, "cannot serve a health-check NodePort"),
            }
        }
        *self.ports.lock().unwrap_or_else(|e| e.into_inner()) = wanted;
    }

    fn listen(&self, port: u16) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let ips = self.addresses.clone().unwrap_or_else(|| vec![std::net::Ipv4Addr::UNSPECIFIED.into()]);
        let mut listeners = Vec::new();
        for ip in ips {
            let std_listener = std::net::TcpListener::bind((ip, port))?;
            std_listener.set_nonblocking(true)?;
            listeners.push(TcpListener::from_std(std_listener)?);
        }
        let (ports, proxy) = (Arc::clone(&self.ports), Arc::clone(&self.proxy));
        let answer = Arc::new(move |_: &str| {
            let entry = ports.lock().unwrap_or_else(|e| e.into_inner()).get(&port).cloned();
            health_check_reply(entry, proxy.answer(true).0 == StatusCode::OK)
        });
        Ok(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) stops every
            // listener's loop.
            let mut loops = tokio::task::JoinSet::new();
            for listener in listeners {
                loops.spawn(crate::http::serve_on(listener, Arc::clone(&answer)));
            }
            while loops.join_next().await.is_some() {}
        }))
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).values() {
            task.abort();
        }
    }
}

/// The answer of a health-check NodePort serving `entry` (a Service and
/// its local endpoints; `None`: no Service on this port).
pub fn health_check_reply(entry: Option<(NamespacedName, usize)>, proxy_healthy: bool) -> Reply {
    let Some((service, count)) = entry else {
        return not_found();
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        service.namespace, service.name
    );
    let status = if count > 0 && proxy_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = reply(status, "application/json", body);
    r.headers_mut().insert("X-Load-Balancing-Endpoint-Weight", hyper::header::HeaderValue::from(count));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health(timeout: Duration) -> ProxyHealth {
        ProxyHealth::new(vec![(IpFamily::V4, Arc::new(SyncHealth::new(timeout))), (IpFamily::V6, Arc::new(SyncHealth::new(timeout)))])
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_until_an_update_waits_too_long() {
        let s = health(Duration::from_secs(60));
        let (status, body) = s.answer(true);
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<usize> = ["\"lastUpdated\"", "\"currentTime\"", "\"nodeEligible\"", "\"healthy\""].iter().map(|k| body.find(k).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "upstream's field order: {body}");
        assert!(!body.contains("status"), "no status before a sync: {body}");
        assert_eq!((&json["nodeEligible"], &json["healthy"]), (&true.into(), &true.into()));
        assert!(!s.all_synced());
        s.healths()[0].1.updated(tokio::time::Instant::now());
        s.healths()[0].1.queued(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_secs(61)).await;
        let (status, body) = s.answer(true);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["healthy"], false);
        assert_eq!(json["status"]["IPv4"]["healthy"], false, "{body}");
        assert!(json["status"].get("IPv6").is_none(), "a family that never synced has no status: {body}");
        assert!(!s.all_synced(), "IPv6 never synced");
        s.healths()[1].1.updated(tokio::time::Instant::now());
        assert!(s.all_synced());
    }

    #[tokio::test]
    async fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let s = health(Duration::from_secs(60));
        s.set_node_eligible(false);
        assert_eq!(s.answer(true).0, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = s.answer(false);
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("nodeEligible"), "{body}");
        let (_, body) = s.answer(true);
        assert!(body.contains("\"nodeEligible\":false,\"healthy\":true"), "the proxiers are healthy; the node is not eligible: {body}");
    }

    #[test]
    fn the_autoscaler_s_taint_or_a_deletion_makes_a_node_ineligible() {
        use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
        let tainted = |key: &str| Node {
            spec: Some(NodeSpec { taints: Some(vec![Taint { key: key.into(), effect: "NoSchedule".into(), ..Default::default() }]), ..Default::default() }),
            ..Default::default()
        };
        assert!(node_eligible(Some(&Node::default())));
        assert!(node_eligible(Some(&tainted("node.kubernetes.io/unschedulable"))), "a cordon is not a deletion");
        assert!(!node_eligible(Some(&tainted("ToBeDeletedByClusterAutoscaler"))));
        let mut deleting = Node::default();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!node_eligible(Some(&deleting)));
        assert!(!node_eligible(None), "never seen");
    }

    #[test]
    fn health_check_ports_answer_like_upstream() {
        let svc = NamespacedName::new("ns", "lb");
        let r = health_check_reply(Some((svc.clone(), 2)), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
        assert_eq!(health_check_reply(Some((svc.clone(), 0)), true).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health_check_reply(Some((svc, 3)), false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health_check_reply(None, true).status(), StatusCode::NOT_FOUND);
    }

    /// Health-check NodePorts listen on the NodePort addresses only, and
    /// nowhere when `nodePortAddresses` matched none (as upstream); a
    /// Service that goes takes its listener with it.
    #[tokio::test]
    async fn health_check_ports_listen_on_the_nodeport_addresses() {
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = Arc::new(health(Duration::from_secs(60)));
        let checks = |addresses: Option<Vec<IpAddr>>, port: u16| {
            let hc = HealthCheckServers::new(Arc::clone(&proxy), addresses);
            let check = HealthCheck { port, local_endpoints: 1 };
            hc.update(IpFamily::V4, &BTreeMap::from([(NamespacedName::new("ns", "lb"), check)]));
            hc
        };
        let connects = |ip: &str, port: u16| std::net::TcpStream::connect((ip.parse::<IpAddr>().unwrap(), port)).is_ok();

        let port = free_port();
        let only_loopback = checks(Some(vec!["127.0.0.1".parse().unwrap()]), port);
        assert!(connects("127.0.0.1", port), "listens on its NodePort address");
        assert!(!connects("127.0.0.2", port), "and on no other");
        only_loopback.update(IpFamily::V4, &BTreeMap::new());
        let mut closed = false;
        for _ in 0..100 {
            if !connects("127.0.0.1", port) {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the Service went: its port closes");

        let port = free_port();
        let _nowhere = checks(Some(Vec::new()), port);
        assert!(!connects("127.0.0.1", port), "no NodePort address: no listener");

        let port = free_port();
        let _everywhere = checks(None, port);
        assert!(connects("127.0.0.2", port), "every address");
    }

    #[test]
    fn times_look_like_go_s() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(go_time(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(go_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}
