//! The binary's two servers, answering as kube-proxy does: the proxy
//! health server (`/healthz`, `/livez`: kproxy-agent's, counted in
//! upstream's metrics) and the metrics server (`/metrics`, `/healthz`,
//! `/proxyMode`, `/configz`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use hyper::StatusCode;
use kproxy_agent::health::{serve_health, ProxyHealth};
use kproxy_agent::http::{not_found, reply, serve, Reply};

use crate::metrics::{Code, Metrics};

/// What the servers read.
#[derive(Debug)]
pub struct Shared {
    /// The proxiers' health and the node's eligibility.
    pub health: Arc<ProxyHealth>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The proxy mode, for `/proxyMode`.
    pub mode: &'static str,
    /// The effective configuration as JSON, for `/configz`.
    pub configz: String,
}

/// The metrics server's answer for `path`.
fn metrics_reply(path: &str, shared: &Shared) -> Reply {
    match path {
        "/metrics" => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics.encode()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok".into()),
        "/proxyMode" => reply(StatusCode::OK, "text/plain", shared.mode.into()),
        "/configz" => reply(StatusCode::OK, "application/json", shared.configz.clone()),
        _ => not_found(),
    }
}

/// Serves the proxy health server on `addr`, counting its answers in
/// `kubeproxy_proxy_healthz_total` / `kubeproxy_proxy_livez_total`.
pub async fn serve_health_server(addr: SocketAddr, shared: Arc<Shared>, hard_fail: bool) -> Result<()> {
    let metrics = Arc::clone(&shared.metrics);
    serve_health(addr, Arc::clone(&shared.health), hard_fail, move |with_node, status| {
        let counter = if with_node { &metrics.healthz } else { &metrics.livez };
        counter.get_or_create(&Code { code: status.as_u16().to_string() }).inc();
    })
    .await?;
    Ok(())
}

/// Serves the metrics server on `addr`.
pub async fn serve_metrics_server(addr: SocketAddr, shared: Arc<Shared>, hard_fail: bool) -> Result<()> {
    serve("Metrics", addr, hard_fail, move |path| metrics_reply(path, &shared)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_core::runner::SyncHealth;
    use kproxy_core::IpFamily;
    use std::time::Duration;

    fn shared() -> Shared {
        Shared {
            health: Arc::new(ProxyHealth::new(vec![(IpFamily::V4, Arc::new(SyncHealth::new(Duration::from_secs(60))))])),
            metrics: Arc::new(Metrics::new(crate::settings::Mode::Nftables)),
            mode: "nftables",
            configz: "{\"mode\":\"nftables\"}".into(),
        }
    }

    #[test]
    fn the_metrics_server_answers_upstream_s_paths() {
        let s = shared();
        assert_eq!(metrics_reply("/proxyMode", &s).status(), StatusCode::OK);
        assert_eq!(metrics_reply("/nothing", &s).status(), StatusCode::NOT_FOUND);
        let r = metrics_reply("/metrics", &s);
        assert!(r.headers()["Content-Type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    }

    /// Every answer of the health server is counted by its path and code.
    #[tokio::test]
    async fn health_answers_are_counted() {
        let s = Arc::new(shared());
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        serve_health_server(addr, Arc::clone(&s), true).await.unwrap();
        s.health.set_node_eligible(false);
        for path in ["/healthz", "/livez"] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            let expected = if path == "/healthz" { "503" } else { "200" };
            assert!(answer.starts_with(&format!("HTTP/1.1 {expected}")), "{path}: {answer}");
        }
        let text = s.metrics.encode();
        assert!(text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"), "{text}");
        assert!(text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"), "{text}");
    }
}
