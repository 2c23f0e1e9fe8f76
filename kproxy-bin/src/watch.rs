//! Cluster mode's source: kproxy-agent's kube watchers (upstream's label
//! selector, relists after any failure) feeding the running [`Proxy`], and
//! the API client they use (rate-limited, with upstream's `rest_client_*`
//! metrics).

use kproxy_agent::kube_source::{one_line, Sink};
use kproxy_core::runner::Update;
use kube::Client;

use crate::proxy::Proxy;

pub use kproxy_agent::kube_source::fetch_node;

/// A client from `--kubeconfig` (or the config file's
/// `clientConnection.kubeconfig`), else the in-cluster service account or
/// `$KUBECONFIG`/`~/.kube/config`; `--master` overrides the server.
/// Every request waits for `limits` and is recorded in `metrics`.
pub async fn client(kubeconfig: Option<&str>, master: Option<&str>, limits: crate::api_client::Limits, metrics: std::sync::Arc<crate::metrics::Metrics>) -> anyhow::Result<Client> {
    let mut config = match kubeconfig.filter(|k| !k.is_empty()) {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("{path}: cannot read the kubeconfig: {}", one_line(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("{path}: unusable kubeconfig: {}", one_line(&e)))?
        }
        None => match master {
            Some(_) => kube::Config::new("http://localhost".parse().expect("literal URL")),
            None => kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!("no API server: not in a cluster and no kubeconfig ({}); use --kubeconfig FILE, or --manifests DIR", one_line(&e))
            })?,
        },
    };
    if let Some(m) = master.filter(|m| !m.is_empty()) {
        config.cluster_url = m.parse().map_err(|e| anyhow::anyhow!("--master {m:?}: not a URL: {e}"))?;
    }
    let host = config.cluster_url.authority().map(|a| a.to_string()).unwrap_or_default();
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| anyhow::anyhow!("cannot build the API client: {}", one_line(&e)))?;
    Ok(builder.with_layer(&crate::api_client::Layer::new(limits, metrics, host)).build())
}

impl Sink for Proxy {
    async fn send(&self, updates: Vec<Update>) {
        for u in &updates {
            if let Update::Node(node) = u {
                self.set_node_eligible(kproxy_agent::health::node_eligible(Some(node)));
            }
        }
        Proxy::send(self, updates).await;
    }

    fn node_deleted(&self) {
        self.set_node_eligible(false);
    }

    fn node_eligible(&self, eligible: bool) {
        self.set_node_eligible(eligible);
    }
}

/// Feeds `proxy` from the API server until the future is dropped.
pub async fn follow(proxy: &Proxy, client: Client, node_name: &str) {
    kproxy_agent::kube_source::follow(proxy, client, node_name).await;
}
