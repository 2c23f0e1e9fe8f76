//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) with
//! upstream's exact field names, its defaults, and strict parsing: an unknown
//! or misspelled field is an error naming the field.
//!
//! Every field is optional because real files carry `null` for unset values
//! (kubeadm writes them so); as upstream, zero values mean "the default".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// Must be `kubeproxy.config.k8s.io/v1alpha1` when set.
    pub api_version: Option<String>,
    /// Must be `KubeProxyConfiguration` when set.
    pub kind: Option<String>,
    /// Feature gates (accepted; kproxy has none of upstream's alpha features).
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// API server connection.
    pub client_connection: Option<ClientConnection>,
    /// Logging (format and verbosity are used).
    pub logging: Option<Logging>,
    /// The node name to use instead of the hostname.
    pub hostname_override: Option<String>,
    /// Overrides the node's primary IP.
    pub bind_address: Option<String>,
    /// The health server's address (default `0.0.0.0:10256`).
    pub healthz_bind_address: Option<String>,
    /// The metrics server's address (default `127.0.0.1:10249`).
    pub metrics_bind_address: Option<String>,
    /// Exit if a server cannot bind.
    pub bind_address_hard_fail: Option<bool>,
    /// Profiling handlers (accepted, not served).
    pub enable_profiling: Option<bool>,
    /// Accepted for compatibility.
    pub show_hidden_metrics_for_version: Option<String>,
    /// `nftables`, `iptables` or `ipvs` (default `iptables`, as upstream).
    pub mode: Option<String>,
    /// iptables settings.
    pub iptables: Option<IptablesConfiguration>,
    /// IPVS settings.
    pub ipvs: Option<IpvsConfiguration>,
    /// nftables settings.
    pub nftables: Option<NftablesConfiguration>,
    /// Windows settings (accepted, unused on Linux).
    pub winkernel: Option<WinkernelConfiguration>,
    /// `ClusterCIDR`, `NodeCIDR`, `BridgeInterface` or `InterfaceNamePrefix`.
    pub detect_local_mode: Option<String>,
    /// Settings of the interface-based detectors.
    pub detect_local: Option<DetectLocal>,
    /// The cluster's pod CIDRs, comma-separated for dual-stack.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// CIDRs or `primary`/`all`/`localhost` for NodePorts.
    pub node_port_addresses: Option<Vec<String>>,
    /// The process's OOM score adjustment.
    pub oom_score_adj: Option<i32>,
    /// Conntrack settings.
    pub conntrack: Option<ConntrackConfiguration>,
    /// How often informers resync (default 15m).
    pub config_sync_period: Option<String>,
    /// Unused upstream; accepted.
    pub port_range: Option<String>,
    /// Windows only; accepted.
    pub windows_run_as_service: Option<bool>,
}

/// `clientConnection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnection {
    /// Path to a kubeconfig.
    pub kubeconfig: Option<String>,
    /// Accept header.
    pub accept_content_types: Option<String>,
    /// Content type.
    pub content_type: Option<String>,
    /// Client QPS.
    pub qps: Option<f64>,
    /// Client burst.
    pub burst: Option<i64>,
}

/// `logging` (component-base's LoggingConfiguration; the parts kproxy does
/// not use are kept as opaque values).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Logging {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Duration or nanoseconds; accepted.
    pub flush_frequency: Option<serde_json::Value>,
    /// Verbosity, as `-v`.
    pub verbosity: Option<u32>,
    /// Per-module verbosity; accepted.
    pub vmodule: Option<serde_json::Value>,
    /// Format options; accepted.
    pub options: Option<serde_json::Value>,
}

/// `iptables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesConfiguration {
    /// Mark bit for masquerade (default 14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: Option<bool>,
    /// NodePorts on localhost (IPv4, iptables only).
    pub localhost_node_ports: Option<bool>,
    /// SNAT with the node's InternalIP.
    #[serde(rename = "snatNodeInternalIP")]
    pub snat_node_internal_ip: Option<bool>,
    /// Full resync period (default 30s).
    pub sync_period: Option<String>,
    /// Minimum time between syncs (default 1s).
    pub min_sync_period: Option<String>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NftablesConfiguration {
    /// Mark bit for masquerade (default 14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: Option<bool>,
    /// Full resync period (default 30s).
    pub sync_period: Option<String>,
    /// Minimum time between syncs (default 1s).
    pub min_sync_period: Option<String>,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsConfiguration {
    /// Full resync period (default 30s).
    pub sync_period: Option<String>,
    /// Minimum time between syncs.
    pub min_sync_period: Option<String>,
    /// IPVS scheduler (default `rr`).
    pub scheduler: Option<String>,
    /// CIDRs IPVS cleanup leaves alone.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// Strict ARP.
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    /// IPVS TCP timeout.
    pub tcp_timeout: Option<String>,
    /// IPVS TCP FIN timeout.
    pub tcp_fin_timeout: Option<String>,
    /// IPVS UDP timeout.
    pub udp_timeout: Option<String>,
}

/// `winkernel` (accepted so Windows-shaped files still parse).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WinkernelConfiguration {
    /// HNS network.
    pub network_name: Option<String>,
    /// Source VIP.
    pub source_vip: Option<String>,
    /// DSR.
    #[serde(rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    /// Root HNS endpoint.
    pub root_hns_endpoint_name: Option<String>,
    /// Health-check VIP forwarding.
    pub forward_health_check_vip: Option<bool>,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectLocal {
    /// For `BridgeInterface`.
    pub bridge_interface: Option<String>,
    /// For `InterfaceNamePrefix`.
    pub interface_name_prefix: Option<String>,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    /// Connections per core (default 32768).
    pub max_per_core: Option<i32>,
    /// Minimum table size (default 131072).
    pub min: Option<i32>,
    /// Established TCP timeout (default 24h).
    pub tcp_established_timeout: Option<String>,
    /// CLOSE_WAIT timeout (default 1h).
    pub tcp_close_wait_timeout: Option<String>,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: Option<bool>,
    /// Unreplied UDP timeout.
    pub udp_timeout: Option<String>,
    /// Assured UDP timeout.
    pub udp_stream_timeout: Option<String>,
}

/// What can be wrong with a configuration, one line each.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file did not parse (unknown field, wrong type, bad YAML).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, first line.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file (or `flags`).
        path: String,
        /// The field, as spelled in the file.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses a configuration file's text. `path` is only used in messages.
pub fn parse(path: &str, text: &str) -> Result<KubeProxyConfiguration, ConfigError> {
    let config: KubeProxyConfiguration = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string().lines().next().unwrap_or("invalid YAML").to_string(),
    })?;
    let invalid = |field: &str, message: String| ConfigError::Invalid { path: path.to_string(), field: field.to_string(), message };
    if let Some(v) = config.api_version.as_deref().filter(|v| !v.is_empty()) {
        if v != "kubeproxy.config.k8s.io/v1alpha1" {
            return Err(invalid("apiVersion", format!("{v:?} is not kubeproxy.config.k8s.io/v1alpha1")));
        }
    }
    if let Some(k) = config.kind.as_deref().filter(|k| !k.is_empty()) {
        if k != "KubeProxyConfiguration" {
            return Err(invalid("kind", format!("{k:?} is not KubeProxyConfiguration")));
        }
    }
    Ok(config)
}

/// Parses a Go-style duration (`30s`, `1m`, `2h22m`, `1.5s`, `0s`, `15m0s`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = include_str!("../testdata/kubeadm-config.yaml");

    #[test]
    fn kubeadm_s_configmap_parses() {
        let c = parse("kubeadm-config.yaml", KUBEADM).unwrap();
        assert_eq!(c.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(c.node_port_addresses, None);
        assert_eq!(c.iptables.unwrap().masquerade_bit, None);
    }

    #[test]
    fn a_misspelled_field_is_named() {
        let err = parse("c.yaml", "clusterCidr: 10.0.0.0/8\n").unwrap_err().to_string();
        assert!(err.starts_with("c.yaml: ") && err.contains("clusterCidr"), "{err}");
        let err = parse("c.yaml", "nftables:\n  masqueradeBits: 3\n").unwrap_err().to_string();
        assert!(err.contains("masqueradeBits"), "{err}");
    }

    #[test]
    fn wrong_types_and_kinds_are_errors() {
        assert!(parse("c.yaml", "iptables:\n  masqueradeAll: maybe\n").is_err());
        let err = parse("c.yaml", "kind: KubeletConfiguration\n").unwrap_err().to_string();
        assert_eq!(err, "c.yaml: kind: \"KubeletConfiguration\" is not KubeProxyConfiguration");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h22m"), Some(Duration::from_secs(2 * 3600 + 22 * 60)));
        assert_eq!(parse_duration("15m0s"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "10", "10x", "-1s", "1s2"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
