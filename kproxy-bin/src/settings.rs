//! The effective settings: the configuration file, overridden by flags, with
//! upstream's defaults filled in and every value checked.

use std::time::Duration;

use ipnet::IpNet;
use kproxy_backend_ipvs::model::{Scheduler, Timeouts};
use kproxy_backend_ipvs::IpvsOptions;
use kproxy_agent::backend::ProxyOptions;
use kproxy_core::NodePortAddresses;

use crate::config::{ConfigError, GoDuration, KubeProxyConfiguration};
use crate::sysctls::ConntrackSysctls;

pub use kproxy_agent::backend::{DetectLocal, Mode};

/// Everything kproxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What every family's proxier is built with: the mode, the node's
    /// name, masquerading, the local detector, NodePort addresses, IPVS
    /// options.
    pub proxy: ProxyOptions,
    /// Full resync period.
    pub sync_period: Duration,
    /// Minimum time between syncs.
    pub min_sync_period: Duration,
    /// The proxy health server's address (`None`: no server).
    pub healthz_bind_address: Option<std::net::SocketAddr>,
    /// The metrics server's address.
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// `oomScoreAdj`, applied to this process at start.
    pub oom_score_adj: i32,
    /// Exit when a server cannot bind, instead of retrying every 5 s.
    pub bind_address_hard_fail: bool,
    /// `bindAddress` when it names an address: the node's primary IP.
    pub primary_ip: Option<std::net::IpAddr>,
    /// `clientConnection.qps`: API requests per second.
    pub api_qps: f64,
    /// `clientConnection.burst`: API requests allowed at once above the rate.
    pub api_burst: u32,
    /// The conntrack sysctls to set at start.
    pub conntrack: ConntrackSysctls,
}

fn bind_address(path: &str, field: &str, value: Option<&str>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| invalid(path, field, format!("{text:?} is not an IP:port address"))),
    }
}

fn invalid(path: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_string(), field: field.to_string(), message: message.into() }
}

fn cidrs(path: &str, field: &str, text: &str) -> Result<Vec<IpNet>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| invalid(path, field, format!("{s:?} is not a CIDR"))))
        .collect()
}

fn std_duration(d: Option<GoDuration>) -> Duration {
    d.and_then(GoDuration::to_std).unwrap_or_default()
}

/// The settings of `config`, the effective configuration (see
/// [`crate::config::defaults`]) read from `path`, which
/// [`crate::config::validate::validate`] has passed.
pub fn resolve(config: &KubeProxyConfiguration, path: &str) -> Result<Settings, ConfigError> {
    let mode = match config.mode.as_deref().unwrap_or("iptables") {
        "nftables" => Mode::Nftables,
        "iptables" | "" => Mode::Iptables,
        "ipvs" => Mode::Ipvs,
        "userspace" => Mode::Userspace,
        other => return Err(invalid(path, "mode", format!("unknown proxy mode {other:?} (expected nftables, iptables, ipvs or userspace)"))),
    };
    let node_name = config
        .hostname_override
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default())
        .trim()
        .to_lowercase();
    if node_name.is_empty() {
        return Err(invalid(path, "hostnameOverride", "no node name: set --hostname-override"));
    }

    let cluster_cidrs = cidrs(path, "clusterCIDR", config.cluster_cidr.as_deref().unwrap_or_default())?;
    let detect = config.detect_local.clone().unwrap_or_default();
    let detect_local = match config.detect_local_mode.as_deref().unwrap_or("") {
        "" | "ClusterCIDR" if cluster_cidrs.is_empty() => DetectLocal::None,
        "" | "ClusterCIDR" => DetectLocal::ClusterCidr(cluster_cidrs),
        "NodeCIDR" => DetectLocal::NodeCidr,
        "BridgeInterface" => match detect.bridge_interface.filter(|b| !b.is_empty()) {
            Some(b) => DetectLocal::Bridge(b),
            None => return Err(invalid(path, "detectLocal.bridgeInterface", "required by detectLocalMode BridgeInterface")),
        },
        "InterfaceNamePrefix" => match detect.interface_name_prefix.filter(|p| !p.is_empty()) {
            Some(p) => DetectLocal::Prefix(p),
            None => return Err(invalid(path, "detectLocal.interfaceNamePrefix", "required by detectLocalMode InterfaceNamePrefix")),
        },
        other => return Err(invalid(path, "detectLocalMode", format!("unknown mode {other:?}"))),
    };

    // IPVS mode takes its masquerade settings from `iptables`, as upstream.
    let i = config.iptables.clone().unwrap_or_default();
    let n = config.nftables.clone().unwrap_or_default();
    let v = config.ipvs.clone().unwrap_or_default();
    let (masquerade_all, bit, sync, min_sync) = match mode {
        Mode::Nftables => (n.masquerade_all, n.masquerade_bit, n.sync_period, n.min_sync_period),
        Mode::Iptables => (i.masquerade_all, i.masquerade_bit, i.sync_period, i.min_sync_period),
        Mode::Ipvs => (i.masquerade_all, i.masquerade_bit, v.sync_period, v.min_sync_period),
        // As upstream's userspace mode: the iptables section's periods.
        Mode::Userspace => (i.masquerade_all, i.masquerade_bit, i.sync_period, i.min_sync_period),
    };
    let bit_section = if mode == Mode::Nftables { "nftables" } else { "iptables" };
    let masquerade_bit = match bit.unwrap_or(14) {
        b @ 0..=31 => b as u8,
        b => return Err(invalid(path, &format!("{bit_section}.masqueradeBit"), format!("{b} is out of range 0-31"))),
    };
    let node_port_addresses = node_ports(path, config.node_port_addresses.as_deref().unwrap_or_default(), mode)?;
    let healthz_bind_address = bind_address(path, "healthzBindAddress", config.healthz_bind_address.as_deref())?;
    let metrics_bind_address = bind_address(path, "metricsBindAddress", config.metrics_bind_address.as_deref())?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let conntrack = ConntrackSysctls::resolve(&config.conntrack.clone().unwrap_or_default(), cpus);
    let localhost_node_ports_wanted = mode == Mode::Iptables && i.localhost_node_ports.unwrap_or(true);
    let client = config.client_connection.clone().unwrap_or_default();
    let bind_ip = config.bind_address.as_deref().and_then(|a| a.parse::<std::net::IpAddr>().ok()).filter(|ip| !ip.is_unspecified());
    Ok(Settings {
        proxy: ProxyOptions {
            ipvs: ipvs_options(config, path)?,
            localhost_node_ports_wanted,
            mode,
            node_name,
            detect_local,
            masquerade_all: masquerade_all.unwrap_or(false),
            masquerade_bit,
            node_port_addresses,
            tcp_be_liberal: conntrack.tcp_be_liberal,
        },
        conntrack,
        healthz_bind_address,
        metrics_bind_address,
        sync_period: std_duration(sync),
        min_sync_period: std_duration(min_sync),
        oom_score_adj: config.oom_score_adj.unwrap_or(-999),
        bind_address_hard_fail: config.bind_address_hard_fail.unwrap_or(false),
        primary_ip: bind_ip,
        api_qps: client.qps.unwrap_or(5.0),
        api_burst: u32::try_from(client.burst.unwrap_or(10)).unwrap_or(10),
    })
}

/// The `ipvs` section.
fn ipvs_options(config: &KubeProxyConfiguration, path: &str) -> Result<IpvsOptions, ConfigError> {
    let v = config.ipvs.clone().unwrap_or_default();
    let scheduler = v.scheduler.unwrap_or_default().parse::<Scheduler>().map_err(|e| invalid(path, "ipvs.scheduler", e.to_string()))?;
    let seconds = |field: &str, d: Option<GoDuration>| -> Result<u32, ConfigError> {
        u32::try_from(std_duration(d).as_secs()).map_err(|_| invalid(path, &format!("ipvs.{field}"), "too long (at most 136 years)"))
    };
    Ok(IpvsOptions {
        scheduler,
        strict_arp: v.strict_arp.unwrap_or(false),
        timeouts: Timeouts {
            tcp: seconds("tcpTimeout", v.tcp_timeout)?,
            tcp_fin: seconds("tcpFinTimeout", v.tcp_fin_timeout)?,
            udp: seconds("udpTimeout", v.udp_timeout)?,
        },
        exclude_cidrs: cidrs(path, "ipvs.excludeCIDRs", &v.exclude_cidrs.unwrap_or_default().join(","))?,
        ..IpvsOptions::default()
    })
}

/// `nodePortAddresses` as upstream reads it: unset means every local
/// address, except in nftables mode, where it means `primary`; `primary`
/// stands alone; everything else is a CIDR.
fn node_ports(path: &str, list: &[String], mode: Mode) -> Result<NodePortAddresses, ConfigError> {
    let list: Vec<&str> = list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if list.is_empty() && mode == Mode::Nftables || list == ["primary"] {
        return Ok(NodePortAddresses::Primary);
    }
    let mut nets = Vec::new();
    for item in list {
        match item {
            "primary" => return Err(invalid(path, "nodePortAddresses", "can't use both 'primary' and CIDRs")),
            cidr => nets.extend(cidrs(path, "nodePortAddresses", cidr)?),
        }
    }
    Ok(NodePortAddresses::Cidrs(nets))
}
