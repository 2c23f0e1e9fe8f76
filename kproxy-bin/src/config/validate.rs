//! Upstream v1.34.4's validation of the effective configuration, with
//! field names as a file spells them and one line per problem.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{ConfigError, GoDuration, KubeProxyConfiguration};

/// The previous minor release: the only value
/// `showHiddenMetricsForVersion` may take, as upstream v1.34 allows.
pub const PREVIOUS_MINOR: &str = "1.33";

struct Problems<'a> {
    path: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(ConfigError::Invalid { path: self.path.to_string(), field: field.to_string(), message: message.into() });
    }

    fn not_negative(&mut self, field: &str, d: Option<GoDuration>) {
        if let Some(d) = d.filter(|d| d.0 < 0) {
            self.add(field, format!("{d} must be greater than or equal to 0"));
        }
    }
}

fn cidr(text: &str) -> Option<IpNet> {
    text.trim().parse().ok()
}

fn host_port(p: &mut Problems<'_>, field: &str, text: &str) {
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => p.add(field, format!("{text:?}: must be a valid port")),
        Ok(_) => {}
        Err(_) => p.add(field, format!("{text:?} must be IP:port")),
    }
}

/// Every problem with `c` (the effective configuration read from `path`).
pub fn validate(c: &KubeProxyConfiguration, path: &str) -> Result<(), Vec<ConfigError>> {
    let mut p = Problems { path, list: Vec::new() };
    let mode = c.mode.clone().unwrap_or_default();
    let i = c.iptables.clone().unwrap_or_default();
    let n = c.nftables.clone().unwrap_or_default();
    let v = c.ipvs.clone().unwrap_or_default();
    let bit = |p: &mut Problems<'_>, field: &str, b: Option<i32>| {
        if let Some(b) = b.filter(|b| !(0..=31).contains(b)) {
            p.add(field, format!("{b} must be within the range [0, 31]"));
        }
    };
    bit(&mut p, "iptables.masqueradeBit", i.masquerade_bit);
    let (section, sync, min_sync) = match mode.as_str() {
        "ipvs" => {
            for (field, d) in [("tcpTimeout", v.tcp_timeout), ("tcpFinTimeout", v.tcp_fin_timeout), ("udpTimeout", v.udp_timeout)] {
                p.not_negative(&format!("ipvs.{field}"), d);
            }
            for cidr_text in v.exclude_cidrs.iter().flatten() {
                if cidr(cidr_text).is_none() {
                    p.add("ipvs.excludeCIDRs", format!("{cidr_text:?} must be a valid CIDR"));
                }
            }
            ("ipvs", v.sync_period, v.min_sync_period)
        }
        "nftables" => {
            bit(&mut p, "nftables.masqueradeBit", n.masquerade_bit);
            ("nftables", n.sync_period, n.min_sync_period)
        }
        _ => ("iptables", i.sync_period, i.min_sync_period),
    };
    let ct = c.conntrack.clone().unwrap_or_default();
    for (field, value) in [("maxPerCore", ct.max_per_core), ("min", ct.min)] {
        if let Some(value) = value.filter(|v| *v < 0) {
            p.add(&format!("conntrack.{field}"), format!("{value} must be greater than or equal to 0"));
        }
    }
    for (field, d) in [
        ("tcpEstablishedTimeout", ct.tcp_established_timeout),
        ("tcpCloseWaitTimeout", ct.tcp_close_wait_timeout),
        ("udpTimeout", ct.udp_timeout),
        ("udpStreamTimeout", ct.udp_stream_timeout),
    ] {
        p.not_negative(&format!("conntrack.{field}"), d);
    }
    if let Some(o) = c.oom_score_adj.filter(|o| !(-1000..=1000).contains(o)) {
        p.add("oomScoreAdj", format!("{o} must be within the range [-1000, 1000]"));
    }
    // Upstream's list, and kproxy's userspace mode (which upstream removed
    // in 1.26).
    if !matches!(mode.as_str(), "" | "iptables" | "ipvs" | "nftables" | "userspace") {
        p.add("mode", format!("{mode:?} must be ipvs, iptables, nftables, userspace or blank (blank means the best-available proxy [currently iptables])"));
    }
    if let Some(b) = c.client_connection.as_ref().and_then(|cc| cc.burst).filter(|b| *b < 0) {
        p.add("clientConnection.burst", format!("{b} must be greater than or equal to 0"));
    }
    if c.config_sync_period.is_some_and(|d| d.0 <= 0) {
        p.add("configSyncPeriod", format!("{} must be greater than 0", c.config_sync_period.unwrap_or_default()));
    }
    let (sync, min_sync) = (sync.unwrap_or_default(), min_sync.unwrap_or_default());
    if sync.0 <= 0 {
        p.add(&format!("{section}.syncPeriod"), format!("{sync} must be greater than 0"));
    }
    if min_sync.0 < 0 {
        p.add(&format!("{section}.minSyncPeriod"), format!("{min_sync} must be greater than or equal to 0"));
    } else if min_sync > sync {
        p.add(&format!("{section}.syncPeriod"), format!("{sync} must be greater than or equal to {section}.minSyncPeriod ({min_sync})"));
    }
    let bind = c.bind_address.clone().unwrap_or_default();
    if bind.parse::<IpAddr>().is_err() {
        p.add("bindAddress", format!("{bind:?} is not a valid textual representation of an IP address"));
    }
    if let Some(h) = c.healthz_bind_address.as_deref().filter(|h| !h.is_empty()) {
        host_port(&mut p, "healthzBindAddress", h);
    }
    host_port(&mut p, "metricsBindAddress", c.metrics_bind_address.as_deref().unwrap_or_default());
    let addresses = c.node_port_addresses.clone().unwrap_or_default();
    for (index, a) in addresses.iter().enumerate() {
        if a == "primary" {
            if addresses.len() != 1 {
                p.add(&format!("nodePortAddresses[{index}]"), "can't use both 'primary' and CIDRs");
            }
            break;
        }
        if cidr(a).is_none() {
            p.add(&format!("nodePortAddresses[{index}]"), format!("{a:?} must be a valid CIDR"));
        }
    }
    if let Some(version) = c.show_hidden_metrics_for_version.as_deref().filter(|v| !v.is_empty()) {
        if version != PREVIOUS_MINOR {
            p.add("showHiddenMetricsForVersion", format!("{version:?}: only the previous minor version ({PREVIOUS_MINOR}) is allowed"));
        }
    }
    let detect = c.detect_local.clone().unwrap_or_default();
    match c.detect_local_mode.as_deref().unwrap_or_default() {
        "" | "NodeCIDR" => {}
        "ClusterCIDR" => {
            let text = c.cluster_cidr.clone().unwrap_or_default();
            if !text.is_empty() {
                let parts: Vec<&str> = text.split(',').collect();
                let nets: Vec<Option<IpNet>> = parts.iter().map(|s| cidr(s)).collect();
                if parts.len() > 2 {
                    p.add("clusterCIDR", format!("{text:?} must be either a single CIDR or a dual-stack pair of CIDRs"));
                } else if let Some(bad) = parts.iter().zip(&nets).find(|(_, n)| n.is_none()) {
                    p.add("clusterCIDR", format!("{:?} must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)", bad.0));
                } else if let [Some(a), Some(b)] = nets.as_slice() {
                    if a.addr().is_ipv4() == b.addr().is_ipv4() {
                        p.add("clusterCIDR", format!("{text:?} must be either a single CIDR or a dual-stack pair of CIDRs"));
                    }
                }
            }
        }
        "BridgeInterface" if detect.bridge_interface.as_deref().unwrap_or_default().is_empty() => {
            p.add("detectLocal.bridgeInterface", "must not be empty (detectLocalMode is BridgeInterface)");
        }
        "InterfaceNamePrefix" if detect.interface_name_prefix.as_deref().unwrap_or_default().is_empty() => {
            p.add("detectLocal.interfaceNamePrefix", "must not be empty (detectLocalMode is InterfaceNamePrefix)");
        }
        "BridgeInterface" | "InterfaceNamePrefix" => {}
        other => p.add("detectLocalMode", format!("{other:?}: supported values: \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\", \"\"")),
    }
    let format = c.logging.as_ref().and_then(|l| l.format.clone()).unwrap_or_default();
    if !matches!(format.as_str(), "" | "text" | "json") {
        p.add("logging.format", format!("{format:?}: Unsupported log format (expected text or json)"));
    }
    if p.list.is_empty() {
        Ok(())
    } else {
        Err(p.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_file, parse};
    use crate::flags::Flags;

    fn problems(body: &str) -> Vec<String> {
        let text = format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}");
        let (file, _) = parse("c.yaml", &text).unwrap();
        let c = from_file(file, &Flags::default()).unwrap();
        validate(&c, "c.yaml").err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn upstream_s_checks_one_line_each() {
        assert_eq!(problems(""), Vec::<String>::new());
        let got = problems("oomScoreAdj: 5000\nconfigSyncPeriod: -1s\nnodePortAddresses: [primary, 10.0.0.0/8]\n");
        assert_eq!(
            got,
            [
                "c.yaml: oomScoreAdj: 5000 must be within the range [-1000, 1000]",
                "c.yaml: configSyncPeriod: -1s must be greater than 0",
                "c.yaml: nodePortAddresses[0]: can't use both 'primary' and CIDRs",
            ]
        );
        assert_eq!(problems("mode: nftables\nnftables:\n  minSyncPeriod: 1m\n"), ["c.yaml: nftables.syncPeriod: 30s must be greater than or equal to nftables.minSyncPeriod (1m0s)"]);
        assert_eq!(problems("healthzBindAddress: 1.2.3.4:0\n").len(), 1);
        assert_eq!(problems("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n").len(), 1, "not a dual-stack pair");
        assert_eq!(problems("showHiddenMetricsForVersion: \"1.20\"\n").len(), 1);
        assert_eq!(problems("detectLocalMode: BridgeInterface\n").len(), 1);
        assert_eq!(problems("mode: userspace\n"), Vec::<String>::new(), "kproxy keeps the userspace mode");
        assert_eq!(problems("mode: kernelspace\n").len(), 1);
        // Checks of another mode's section do not apply, as upstream.
        assert_eq!(problems("mode: nftables\nipvs:\n  tcpTimeout: -5s\n"), Vec::<String>::new());
        assert_eq!(problems("mode: ipvs\nipvs:\n  tcpTimeout: -5s\n").len(), 1);
    }
}
