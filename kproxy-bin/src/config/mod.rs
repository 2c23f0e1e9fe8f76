//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) with
//! upstream's exact field names, read, defaulted and validated as upstream
//! v1.34.4 does:
//!
//! - [`load`]: a file is decoded strictly first; an unknown field is one
//!   warning naming it and the file, and the rest still applies (upstream's
//!   lenient fallback). A wrong type or a bad duration is an error.
//! - [`defaults`]: upstream's defaults, and the flags when there is no
//!   file; the result is what `--write-config-to` writes and `/configz`
//!   shows.
//! - [`validate`]: upstream's checks, one line per problem.
//!
//! Every field is optional because real files carry `null` for unset values
//! (kubeadm writes them so); as upstream, zero values mean "the default".

pub mod defaults;
pub mod duration;
pub mod load;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use defaults::{from_file, from_flags};
pub use duration::GoDuration;
pub use load::{parse, read};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// Must be `kubeproxy.config.k8s.io/v1alpha1` when set.
    pub api_version: Option<String>,
    /// Must be `KubeProxyConfiguration` when set.
    pub kind: Option<String>,
    /// Feature gates (accepted; kproxy has none of upstream's alpha features).
    #[serde(skip_serializing_if = "map_is_empty")]
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
    pub config_sync_period: Option<GoDuration>,
    /// Unused upstream; accepted.
    pub port_range: Option<String>,
    /// Windows only; accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows_run_as_service: Option<bool>,
}

/// `clientConnection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    /// Path to a kubeconfig.
    pub kubeconfig: Option<String>,
    /// Accept header.
    pub accept_content_types: Option<String>,
    /// Content type.
    pub content_type: Option<String>,
    /// Client QPS.
    #[serde(serialize_with = "go_float")]
    pub qps: Option<f64>,
    /// Client burst.
    pub burst: Option<i64>,
}

/// `logging` (component-base's LoggingConfiguration; the parts kproxy does
/// not use are kept as opaque values).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Duration or nanoseconds; accepted.
    pub flush_frequency: Option<serde_json::Value>,
    /// Verbosity, as `-v`.
    pub verbosity: Option<u32>,
    /// Per-module verbosity; accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmodule: Option<serde_json::Value>,
    /// Format options; accepted.
    pub options: Option<serde_json::Value>,
}

/// `iptables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesConfiguration {
    /// Mark bit for masquerade (default 14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: Option<bool>,
    /// NodePorts on localhost (IPv4, iptables only).
    pub localhost_node_ports: Option<bool>,
    /// Full resync period (default 30s).
    pub sync_period: Option<GoDuration>,
    /// Minimum time between syncs (default 1s).
    pub min_sync_period: Option<GoDuration>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NftablesConfiguration {
    /// Mark bit for masquerade (default 14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: Option<bool>,
    /// Full resync period (default 30s).
    pub sync_period: Option<GoDuration>,
    /// Minimum time between syncs (default 1s).
    pub min_sync_period: Option<GoDuration>,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConfiguration {
    /// Full resync period (default 30s).
    pub sync_period: Option<GoDuration>,
    /// Minimum time between syncs.
    pub min_sync_period: Option<GoDuration>,
    /// IPVS scheduler (default `rr`).
    pub scheduler: Option<String>,
    /// CIDRs IPVS cleanup leaves alone.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// Strict ARP.
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    /// IPVS TCP timeout.
    pub tcp_timeout: Option<GoDuration>,
    /// IPVS TCP FIN timeout.
    pub tcp_fin_timeout: Option<GoDuration>,
    /// IPVS UDP timeout.
    pub udp_timeout: Option<GoDuration>,
}

/// `winkernel` (accepted so Windows-shaped files still parse).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    /// For `BridgeInterface`.
    pub bridge_interface: Option<String>,
    /// For `InterfaceNamePrefix`.
    pub interface_name_prefix: Option<String>,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    /// Connections per core (default 32768).
    pub max_per_core: Option<i32>,
    /// Minimum table size (default 131072).
    pub min: Option<i32>,
    /// Established TCP timeout (default 24h).
    pub tcp_established_timeout: Option<GoDuration>,
    /// CLOSE_WAIT timeout (default 1h).
    pub tcp_close_wait_timeout: Option<GoDuration>,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: Option<bool>,
    /// Unreplied UDP timeout.
    pub udp_timeout: Option<GoDuration>,
    /// Assured UDP timeout.
    pub udp_stream_timeout: Option<GoDuration>,
}

/// A float as Go's YAML writes it: `5`, not `5.0`.
fn go_float<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => s.serialize_i64(*v as i64),
        Some(v) => s.serialize_f64(*v),
        None => s.serialize_none(),
    }
}

fn map_is_empty(map: &Option<BTreeMap<String, bool>>) -> bool {
    map.as_ref().is_none_or(BTreeMap::is_empty)
}

/// What can be wrong with a configuration, one line each.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read or did not parse (wrong type, bad YAML,
    /// bad duration).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, one line.
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

/// Several problems at once, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// The configuration kproxy runs with, and what to say about it once
/// logging is up.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// The defaulted, validated configuration.
    pub config: KubeProxyConfiguration,
    /// The file it came from, or `flags`.
    pub path: String,
    /// One line per unknown field in the file.
    pub warnings: Vec<String>,
    /// Info lines (the default mode, flags without effect, flags the file
    /// overrides).
    pub notes: Vec<String>,
}

/// The effective configuration of the command line: the file of
/// `--config` and the flags that count beside it, or the flags alone;
/// defaulted and validated as upstream. Every problem is one line.
pub fn effective(flags: &crate::flags::Flags) -> Result<Effective, ConfigErrors> {
    let mut notes = Vec::new();
    let (config, path, warnings) = match flags.text("config") {
        Some(path) => {
            let (file, warnings) = parse(&path, &read(&path)?)?;
            if file.mode.as_deref().unwrap_or_default().is_empty() {
                notes.push("Using iptables proxy".to_string());
            }
            (from_file(file, flags)?, path, warnings)
        }
        None => {
            if flags.text("proxy-mode").unwrap_or_default().is_empty() {
                notes.push("Using iptables proxy".to_string());
            }
            (from_flags(flags)?, "flags".to_string(), Vec::new())
        }
    };
    for name in flags.overridden_by_file() {
        notes.push(format!("flag --{name} ignored: --config is given, and the file's value counts (as upstream)"));
    }
    for (name, why) in flags.without_effect() {
        notes.push(format!("flag --{name} accepted with no effect: {why}"));
    }
    validate::validate(&config, &path).map_err(ConfigErrors)?;
    Ok(Effective { config, path, warnings, notes })
}
