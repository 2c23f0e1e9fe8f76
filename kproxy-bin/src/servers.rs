//! The proxy health server (`/healthz`, `/livez`) and the metrics server
//! (`/metrics`, `/healthz`, `/proxyMode`, `/configz`), answering as
//! kube-proxy does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;

use kproxy_core::runner::SyncHealth;
use kproxy_core::{HealthCheck, IpFamily, NamespacedName};
use tokio::net::TcpListener;

use crate::metrics::{Code, Metrics};

/// What the servers read.
#[derive(Debug)]
pub struct Shared {
    /// One health signal per proxier, with its IP family.
    pub healths: Vec<(IpFamily, Arc<SyncHealth>)>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// False while the node is being deleted (`/healthz` then fails).
    pub node_eligible: AtomicBool,
    /// The proxy mode, for `/proxyMode`.
    pub mode: &'static str,
    /// The effective configuration as JSON, for `/configz`.
    pub configz: String,
}

/// Go's JSON form of a `time.Time` (RFC 3339 with nanoseconds, trailing
/// zeros trimmed), which upstream's health bodies carry.
fn go_time(t: SystemTime) -> String {
    let ts = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| k8s_openapi::jiff::Timestamp::new(d.as_secs() as i64, d.subsec_nanos() as i32).ok());
    ts.map(|ts| ts.to_string()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("Content-Type", content_type.parse().expect("valid header"));
    r.headers_mut().insert("X-Content-Type-Options", "nosniff".parse().expect("valid header"));
    r
}

/// The health answer, as upstream's `ProxyHealthServer`: status and body.
/// `with_node` adds node eligibility (`/healthz`); `/livez` ignores it.
/// The body's `healthy` is the proxiers' alone; a node that is not
/// eligible turns only the status to 503.
pub fn health(shared: &Shared, with_node: bool) -> (StatusCode, String) {
    let now_tokio = tokio::time::Instant::now();
    let quote = |t: String| serde_json::Value::String(t).to_string();
    let mut status = Vec::new();
    let mut synced = true;
    let mut last: Option<SystemTime> = None;
    let mut families: Vec<_> = shared.healths.iter().collect();
    families.sort_by_key(|(f, _)| f.to_string());
    for (family, h) in families {
        let snapshot = h.snapshot(now_tokio);
        synced &= snapshot.healthy;
        if let Some(updated) = snapshot.last_updated {
            last = last.max(Some(updated));
            status.push(format!("{}:{{\"lastUpdated\":{},\"healthy\":{}}}", quote(family.to_string()), quote(go_time(updated)), snapshot.healthy));
        }
    }
    let eligible = shared.node_eligible.load(Ordering::Relaxed);
    let ok = synced && (!with_node || eligible);
    let now = SystemTime::now();
    // As upstream: a healthy answer reports "now" as the last update.
    let last = if ok { go_time(now) } else { last.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), go_time) };
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

/// Whether a node may receive traffic, as upstream decides for `/healthz`:
/// not being deleted, and not tainted `ToBeDeletedByClusterAutoscaler`
/// (the taint's key alone counts). A node never seen is not eligible.
pub fn node_eligible(node: Option<&k8s_openapi::api::core::v1::Node>) -> bool {
    node.is_some_and(|n| {
        n.metadata.deletion_timestamp.is_none()
            && !n.spec.iter().flat_map(|s| s.taints.iter().flatten()).any(|t| t.key == "ToBeDeletedByClusterAutoscaler")
    })
}

async fn health_handler(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let with_node = match req.uri().path() {
        "/healthz" => true,
        "/livez" => false,
        _ => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n".into())),
    };
    let (status, body) = health(&shared, with_node);
    let counter = if with_node { &shared.metrics.healthz } else { &shared.metrics.livez };
    counter.get_or_create(&Code { code: status.as_u16().to_string() }).inc();
    Ok(reply(status, "application/json", body))
}

async fn metrics_handler(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics.encode()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok".into()),
        "/proxyMode" => reply(StatusCode::OK, "text/plain", shared.mode.into()),
        "/configz" => reply(StatusCode::OK, "application/json", shared.configz.clone()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n".into()),
    })
}

/// The health-check NodePort servers of `externalTrafficPolicy: Local`
/// Services: one listener per port, started and stopped as Services come
/// and go, answering 200 when the node has a ready endpoint and the proxy
/// is healthy (with upstream's body and `X-Load-Balancing-Endpoint-Weight`).
#[derive(Debug)]
pub struct HealthChecks {
    proxy: Arc<Shared>,
    /// Each family's latest report; the servers serve their union.
    per_family: std::sync::Mutex<BTreeMap<IpFamily, BTreeMap<NamespacedName, HealthCheck>>>,
    counts: Arc<std::sync::Mutex<BTreeMap<u16, (NamespacedName, usize)>>>,
    tasks: std::sync::Mutex<BTreeMap<u16, tokio::task::JoinHandle<()>>>,
    /// The addresses to listen on (`None`: every address).
    addresses: Option<Vec<std::net::IpAddr>>,
}

impl HealthChecks {
    /// No servers yet. They will listen on `addresses` (the NodePort
    /// addresses; `None` for every address; none at all for an empty
    /// list, as upstream).
    pub fn new(proxy: Arc<Shared>, addresses: Option<Vec<std::net::IpAddr>>) -> Self {
        HealthChecks { proxy, per_family: std::sync::Mutex::default(), counts: Arc::default(), tasks: std::sync::Mutex::default(), addresses }
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
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()) = wanted;
    }

    fn listen(&self, port: u16) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let ips = self.addresses.clone().unwrap_or_else(|| vec![std::net::Ipv4Addr::UNSPECIFIED.into()]);
        let mut listeners = Vec::new();
        for ip in ips {
            let std_listener = std::net::TcpListener::bind((ip, port))?;
            std_listener.set_nonblocking(true)?;
            listeners.push(TcpListener::from_std(std_listener)?);
        }
        let counts = Arc::clone(&self.counts);
        let proxy = Arc::clone(&self.proxy);
        Ok(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) stops every
            // listener's loop.
            let mut loops = tokio::task::JoinSet::new();
            for listener in listeners {
                loops.spawn(serve_health_check(listener, port, Arc::clone(&counts), Arc::clone(&proxy)));
            }
            while loops.join_next().await.is_some() {}
        }))
    }
}

/// Answers one health-check NodePort's listener forever.
async fn serve_health_check(listener: TcpListener, port: u16, counts: Arc<std::sync::Mutex<BTreeMap<u16, (NamespacedName, usize)>>>, proxy: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (counts, proxy) = (Arc::clone(&counts), Arc::clone(&proxy));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let entry = counts.lock().unwrap_or_else(|e| e.into_inner()).get(&port).cloned();
                let proxy_healthy = health(&proxy, true).0 == StatusCode::OK;
                async move { Ok::<_, Infallible>(health_check_reply(entry, proxy_healthy)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The answer of a health-check NodePort.
pub fn health_check_reply(entry: Option<(NamespacedName, usize)>, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let Some((service, count)) = entry else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n".into());
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        service.namespace, service.name
    );
    let status = if count > 0 && proxy_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = reply(status, "application/json", body);
    r.headers_mut().insert("X-Load-Balancing-Endpoint-Weight", count.to_string().parse().expect("digits"));
    r
}

/// Which server to run.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `/healthz`, `/livez`.
    Health,
    /// `/metrics` and friends.
    Metrics,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Health => "Healthz",
            Kind::Metrics => "Metrics",
        }
    }
}

/// How long a server that cannot bind waits before it tries again, as
/// upstream.
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `kind` on `addr` until the process ends. A bind failure is an
/// error when `hard_fail` (`bindAddressHardFail`) is set; otherwise it is
/// logged and retried every [`BIND_RETRY`], as upstream, and the rest of
/// kproxy runs meanwhile.
pub async fn serve(kind: Kind, addr: SocketAddr, shared: Arc<Shared>, hard_fail: bool) -> Result<tokio::task::JoinHandle<()>> {
    let first = TcpListener::bind(addr).await;
    let listener = match first {
        Ok(l) => Some(l),
        Err(e) if hard_fail => return Err(e).with_context(|| format!("{} server failed: cannot listen on {addr} (bindAddressHardFail)", kind.name())),
        Err(e) => {
            tracing::error!(error = %e, address = %addr, "{} server failed; retrying every {}s", kind.name(), BIND_RETRY.as_secs());
            None
        }
    };
    Ok(tokio::spawn(async move {
        let listener = match listener {
            Some(l) => l,
            None => loop {
                tokio::time::sleep(BIND_RETRY).await;
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        tracing::info!(address = %addr, "{} server listening", kind.name());
                        break l;
                    }
                    Err(e) => tracing::debug!(error = %e, address = %addr, "{} server still cannot bind", kind.name()),
                }
            },
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move {
                        match kind {
                            Kind::Health => health_handler(req, shared).await,
                            Kind::Metrics => metrics_handler(req, shared).await,
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shared(timeout: Duration) -> Shared {
        Shared {
            healths: vec![(IpFamily::V4, Arc::new(SyncHealth::new(timeout))), (IpFamily::V6, Arc::new(SyncHealth::new(timeout)))],
            metrics: Arc::new(Metrics::new(crate::settings::Mode::Nftables)),
            node_eligible: AtomicBool::new(true),
            mode: "nftables",
            configz: "{}".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_until_an_update_waits_too_long() {
        let s = shared(Duration::from_secs(60));
        let (status, body) = health(&s, true);
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<usize> = ["\"lastUpdated\"", "\"currentTime\"", "\"nodeEligible\"", "\"healthy\""].iter().map(|k| body.find(k).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "upstream's field order: {body}");
        assert!(!body.contains("status"), "no status before a sync: {body}");
        assert_eq!((&json["nodeEligible"], &json["healthy"]), (&true.into(), &true.into()));
        s.healths[0].1.updated(tokio::time::Instant::now());
        s.healths[0].1.queued(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_secs(61)).await;
        let (status, body) = health(&s, true);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["healthy"], false);
        assert_eq!(json["status"]["IPv4"]["healthy"], false, "{body}");
        assert!(json["status"].get("IPv6").is_none(), "a family that never synced has no status: {body}");
    }

    #[tokio::test]
    async fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let s = shared(Duration::from_secs(60));
        s.node_eligible.store(false, Ordering::Relaxed);
        assert_eq!(health(&s, true).0, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = health(&s, false);
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("nodeEligible"), "{body}");
        let (_, body) = health(&s, true);
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
    /// nowhere when `nodePortAddresses` matched none (as upstream).
    #[tokio::test]
    async fn health_check_ports_listen_on_the_nodeport_addresses() {
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let shared = Arc::new(shared(Duration::from_secs(60)));
        let checks = |addresses: Option<Vec<std::net::IpAddr>>, port: u16| {
            let hc = HealthChecks::new(Arc::clone(&shared), addresses);
            let check = HealthCheck { port, local_endpoints: 1 };
            hc.update(IpFamily::V4, &BTreeMap::from([(NamespacedName::new("ns", "lb"), check)]));
            hc
        };
        let connects = |ip: &str, port: u16| std::net::TcpStream::connect((ip.parse::<std::net::IpAddr>().unwrap(), port)).is_ok();

        let port = free_port();
        let _only_loopback = checks(Some(vec!["127.0.0.1".parse().unwrap()]), port);
        assert!(connects("127.0.0.1", port), "listens on its NodePort address");
        assert!(!connects("127.0.0.2", port), "and on no other");

        let port = free_port();
        let _nowhere = checks(Some(Vec::new()), port);
        assert!(!connects("127.0.0.1", port), "no NodePort address: no listener");

        let port = free_port();
        let _everywhere = checks(None, port);
        assert!(connects("127.0.0.2", port), "every address");
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_port_is_retried_every_5s_unless_hard_fail() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let s = Arc::new(shared(Duration::from_secs(60)));
        let err = serve(Kind::Health, addr, Arc::clone(&s), true).await.unwrap_err();
        assert!(format!("{err:#}").contains("Healthz server failed"), "{err:#}");
        let task = serve(Kind::Health, addr, s, false).await.expect("a soft failure is no error");
        drop(taken);
        tokio::time::advance(BIND_RETRY + Duration::from_millis(10)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        tokio::time::resume();
        let mut connected = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert!(connected, "bound on a retry once the port was free");
    }

    #[test]
    fn times_look_like_go_s() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(go_time(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(go_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}
