//! The effective configuration, built as upstream v1.34.4 builds it:
//!
//! 1. upstream's v1alpha1 defaults fill every unset or zero field;
//! 2. the sync periods and `masqueradeAll` of the mode's own section
//!    become the ones in force (upstream's internal configuration has one
//!    of each);
//! 3. without a file, the configuration flags apply; with one, only the
//!    logging flags and `--hostname-override` do;
//! 4. the platform defaults: mode `iptables`, `detectLocalMode:
//!    ClusterCIDR`, and `nodePortAddresses: [primary]` in nftables mode;
//! 5. back to v1alpha1, where only the mode's section carries sync periods.
//!
//! The result is what `--write-config-to` writes, what `/configz` shows and
//! what [`crate::settings::resolve`] reads.

use std::net::{IpAddr, SocketAddr};

use super::duration::GoDuration;
use super::*;
use crate::flags::Flags;

const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;

/// The settings upstream keeps once for every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Common {
    sync: GoDuration,
    min_sync: GoDuration,
    masquerade_all: bool,
}

/// `addr` with `port` appended when it is a bare IP address, as upstream's
/// `AppendPortIfNeeded`.
pub fn append_port_if_needed(addr: &str, port: u16) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    match addr.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => addr.to_string(),
    }
}

fn text(v: &mut Option<String>) -> &mut String {
    v.get_or_insert_with(String::new)
}

fn duration(v: &mut Option<GoDuration>, default: GoDuration) {
    if v.is_none_or(GoDuration::is_zero) {
        *v = Some(default);
    }
}

/// Upstream's `SetDefaults_KubeProxyConfiguration`, plus empty values for
/// every other field, so that the result names every field.
pub fn v1alpha1(mut c: KubeProxyConfiguration) -> KubeProxyConfiguration {
    let secs = GoDuration::from_secs;
    c.api_version = Some("kubeproxy.config.k8s.io/v1alpha1".into());
    c.kind = Some("KubeProxyConfiguration".into());
    if c.bind_address.as_deref().is_none_or(str::is_empty) {
        c.bind_address = Some("0.0.0.0".into());
    }
    let v6 = c.bind_address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()).is_some_and(|ip| ip.is_ipv6());
    let (healthz_host, metrics_host) = if v6 { ("[::]", "[::1]") } else { ("0.0.0.0", "127.0.0.1") };
    let healthz = text(&mut c.healthz_bind_address);
    *healthz = if healthz.is_empty() { format!("{healthz_host}:{HEALTHZ_PORT}") } else { append_port_if_needed(healthz, HEALTHZ_PORT) };
    let metrics = text(&mut c.metrics_bind_address);
    *metrics = if metrics.is_empty() { format!("{metrics_host}:{METRICS_PORT}") } else { append_port_if_needed(metrics, METRICS_PORT) };
    c.oom_score_adj.get_or_insert(-999);

    let i = c.iptables.get_or_insert_with(Default::default);
    duration(&mut i.sync_period, secs(30));
    duration(&mut i.min_sync_period, secs(1));
    i.localhost_node_ports.get_or_insert(true);
    i.masquerade_bit.get_or_insert(14);
    i.masquerade_all.get_or_insert(false);
    let v = c.ipvs.get_or_insert_with(Default::default);
    duration(&mut v.sync_period, secs(30));
    for d in [&mut v.min_sync_period, &mut v.tcp_timeout, &mut v.tcp_fin_timeout, &mut v.udp_timeout] {
        d.get_or_insert_default();
    }
    text(&mut v.scheduler);
    v.strict_arp.get_or_insert(false);
    let n = c.nftables.get_or_insert_with(Default::default);
    duration(&mut n.sync_period, secs(30));
    duration(&mut n.min_sync_period, secs(1));
    n.masquerade_bit.get_or_insert(14);
    n.masquerade_all.get_or_insert(false);

    let ct = c.conntrack.get_or_insert_with(Default::default);
    ct.max_per_core.get_or_insert(32 * 1024);
    ct.min.get_or_insert(128 * 1024);
    ct.tcp_established_timeout.get_or_insert(secs(24 * 3600));
    ct.tcp_close_wait_timeout.get_or_insert(secs(3600));
    ct.tcp_be_liberal.get_or_insert(false);
    ct.udp_timeout.get_or_insert_default();
    ct.udp_stream_timeout.get_or_insert_default();
    duration(&mut c.config_sync_period, secs(15 * 60));

    let cc = c.client_connection.get_or_insert_with(Default::default);
    if cc.content_type.as_deref().is_none_or(str::is_empty) {
        cc.content_type = Some("application/vnd.kubernetes.protobuf".into());
    }
    if cc.qps.is_none_or(|q| q == 0.0) {
        cc.qps = Some(5.0);
    }
    if cc.burst.is_none_or(|b| b == 0) {
        cc.burst = Some(10);
    }
    text(&mut cc.kubeconfig);
    text(&mut cc.accept_content_types);
    c.feature_gates.get_or_insert_with(Default::default);

    let l = c.logging.get_or_insert_with(Default::default);
    if l.format.as_deref().is_none_or(str::is_empty) {
        l.format = Some("text".into());
    }
    if l.flush_frequency.as_ref().is_none_or(|f| f.is_null() || f.as_str() == Some("0s") || f.as_u64() == Some(0)) {
        l.flush_frequency = Some(serde_json::Value::String("5s".into()));
    }
    l.verbosity.get_or_insert(0);
    let buffers = serde_json::json!({"json": {"infoBufferSize": "0"}, "text": {"infoBufferSize": "0"}});
    if l.options.as_ref().is_none_or(serde_json::Value::is_null) {
        l.options = Some(buffers);
    }

    for t in [&mut c.hostname_override, &mut c.cluster_cidr, &mut c.show_hidden_metrics_for_version, &mut c.port_range, &mut c.mode, &mut c.detect_local_mode] {
        text(t);
    }
    c.bind_address_hard_fail.get_or_insert(false);
    c.enable_profiling.get_or_insert(false);
    let d = c.detect_local.get_or_insert_with(Default::default);
    text(&mut d.bridge_interface);
    text(&mut d.interface_name_prefix);
    let w = c.winkernel.get_or_insert_with(Default::default);
    for t in [&mut w.network_name, &mut w.source_vip, &mut w.root_hns_endpoint_name] {
        text(t);
    }
    w.enable_dsr.get_or_insert(false);
    w.forward_health_check_vip.get_or_insert(false);
    c
}

fn mode(c: &KubeProxyConfiguration) -> &str {
    c.mode.as_deref().unwrap_or_default()
}

/// The mode's own sync periods and `masqueradeAll` (IPVS mode takes
/// `masqueradeAll` from the iptables section), of a defaulted `c`.
fn common_of(c: &KubeProxyConfiguration) -> Common {
    let i = c.iptables.clone().unwrap_or_default();
    let n = c.nftables.clone().unwrap_or_default();
    let v = c.ipvs.clone().unwrap_or_default();
    let (sync, min_sync, masquerade_all) = match mode(c) {
        "ipvs" => (v.sync_period, v.min_sync_period, i.masquerade_all),
        "nftables" => (n.sync_period, n.min_sync_period, n.masquerade_all),
        _ => (i.sync_period, i.min_sync_period, i.masquerade_all),
    };
    Common { sync: sync.unwrap_or_default(), min_sync: min_sync.unwrap_or_default(), masquerade_all: masquerade_all.unwrap_or_default() }
}

/// Step 4 and 5: the platform defaults, then back to v1alpha1's shape.
fn finish(mut c: KubeProxyConfiguration, common: Common) -> KubeProxyConfiguration {
    if mode(&c).is_empty() {
        c.mode = Some("iptables".into());
    }
    if mode(&c) == "nftables" && c.node_port_addresses.as_ref().is_none_or(Vec::is_empty) {
        c.node_port_addresses = Some(vec!["primary".into()]);
    }
    if c.detect_local_mode.as_deref().is_none_or(str::is_empty) {
        c.detect_local_mode = Some("ClusterCIDR".into());
    }
    let zero = Some(GoDuration(0));
    let m = mode(&c).to_string();
    let (i, n, v) = (c.iptables.get_or_insert_with(Default::default), c.nftables.get_or_insert_with(Default::default), c.ipvs.get_or_insert_with(Default::default));
    (i.sync_period, i.min_sync_period, n.sync_period, n.min_sync_period, v.sync_period, v.min_sync_period) = (zero, zero, zero, zero, zero, zero);
    let (sync, min_sync) = (Some(common.sync), Some(common.min_sync));
    match m.as_str() {
        "ipvs" => (v.sync_period, v.min_sync_period) = (sync, min_sync),
        "nftables" => (n.sync_period, n.min_sync_period) = (sync, min_sync),
        _ => (i.sync_period, i.min_sync_period) = (sync, min_sync),
    }
    let nft = m == "nftables";
    n.masquerade_all = Some(nft && common.masquerade_all);
    i.masquerade_all = Some(!nft && common.masquerade_all);
    c
}

/// The flags that count with or without a file: logging and
/// `--hostname-override` (trimmed and lower-cased, as upstream).
fn always(c: &mut KubeProxyConfiguration, flags: &Flags) -> Result<(), ConfigError> {
    let l = c.logging.get_or_insert_with(Default::default);
    if let Some(v) = flags.int32("v") {
        l.verbosity = u32::try_from(v).ok();
    }
    if let Some(f) = flags.text("logging-format") {
        l.format = Some(f);
    }
    if let Some(v) = flags.text("vmodule").filter(|v| !v.is_empty()) {
        let settings: Vec<serde_json::Value> = v
            .split(',')
            .filter_map(|item| item.split_once('='))
            .map(|(pattern, level)| serde_json::json!({"filePattern": pattern.trim(), "verbosity": level.trim().parse::<u32>().unwrap_or(0)}))
            .collect();
        l.vmodule = Some(serde_json::Value::Array(settings));
    }
    if let Some(f) = flags.duration("log-flush-frequency") {
        l.flush_frequency = Some(serde_json::Value::String(f.to_string()));
    }
    if let Some(h) = flags.text("hostname-override").filter(|h| !h.is_empty()) {
        let name = h.trim().to_lowercase();
        if name.is_empty() {
            return Err(ConfigError::Invalid { path: "flags".into(), field: "--hostname-override".into(), message: "empty hostname-override is invalid".into() });
        }
        c.hostname_override = Some(name);
    }
    Ok(())
}

/// The effective configuration of the file `path` (already decoded as
/// `file`) and the flags that count alongside a file.
pub fn from_file(file: KubeProxyConfiguration, flags: &Flags) -> Result<KubeProxyConfiguration, ConfigError> {
    let mut c = v1alpha1(file);
    let common = common_of(&c);
    always(&mut c, flags)?;
    Ok(finish(c, common))
}

/// The effective configuration of the flags alone (no `--config`).
pub fn from_flags(flags: &Flags) -> Result<KubeProxyConfiguration, ConfigError> {
    let mut c = v1alpha1(KubeProxyConfiguration::default());
    let mut common = common_of(&c);
    let set = |field: &mut Option<String>, name: &str| {
        if let Some(v) = flags.text(name) {
            *field = Some(v);
        }
    };
    set(&mut c.bind_address, "bind-address");
    set(&mut c.cluster_cidr, "cluster-cidr");
    set(&mut c.detect_local_mode, "detect-local-mode");
    set(&mut c.mode, "proxy-mode");
    set(&mut c.show_hidden_metrics_for_version, "show-hidden-metrics-for-version");
    for (field, name) in [(&mut c.healthz_bind_address, "healthz-bind-address"), (&mut c.metrics_bind_address, "metrics-bind-address")] {
        // An empty value leaves the default, as upstream's flag type does.
        if let Some(v) = flags.text(name).filter(|v| !v.is_empty()) {
            *field = Some(v);
        }
    }
    if let Some(v) = flags.bool("bind-address-hard-fail") {
        c.bind_address_hard_fail = Some(v);
    }
    if let Some(v) = flags.bool("profiling") {
        c.enable_profiling = Some(v);
    }
    if let Some(d) = flags.duration("config-sync-period") {
        c.config_sync_period = Some(d);
    }
    if let Some(v) = flags.int32("oom-score-adj") {
        c.oom_score_adj = Some(v);
    }
    if let Some(n) = flags.list("nodeport-addresses") {
        c.node_port_addresses = Some(n);
    }
    if let Some(gates) = flags.map("feature-gates") {
        c.feature_gates.get_or_insert_with(Default::default).extend(gates);
    }
    let d = c.detect_local.get_or_insert_with(Default::default);
    set(&mut d.bridge_interface, "pod-bridge-interface");
    set(&mut d.interface_name_prefix, "pod-interface-name-prefix");
    let cc = c.client_connection.get_or_insert_with(Default::default);
    set(&mut cc.kubeconfig, "kubeconfig");
    set(&mut cc.content_type, "kube-api-content-type");
    cc.qps = flags.float("kube-api-qps").or(cc.qps);
    cc.burst = flags.int32("kube-api-burst").map(i64::from).or(cc.burst);
    let ct = c.conntrack.get_or_insert_with(Default::default);
    ct.max_per_core = flags.int32("conntrack-max-per-core").or(ct.max_per_core);
    ct.min = flags.int32("conntrack-min").or(ct.min);
    ct.tcp_be_liberal = flags.bool("conntrack-tcp-be-liberal").or(ct.tcp_be_liberal);
    for (field, name) in [
        (&mut ct.tcp_established_timeout, "conntrack-tcp-timeout-established"),
        (&mut ct.tcp_close_wait_timeout, "conntrack-tcp-timeout-close-wait"),
        (&mut ct.udp_timeout, "conntrack-udp-timeout"),
        (&mut ct.udp_stream_timeout, "conntrack-udp-timeout-stream"),
    ] {
        *field = flags.duration(name).or(*field);
    }
    let i = c.iptables.get_or_insert_with(Default::default);
    i.masquerade_bit = flags.int32("iptables-masquerade-bit").or(i.masquerade_bit);
    i.localhost_node_ports = flags.bool("iptables-localhost-nodeports").or(i.localhost_node_ports);
    let v = c.ipvs.get_or_insert_with(Default::default);
    set(&mut v.scheduler, "ipvs-scheduler");
    v.strict_arp = flags.bool("ipvs-strict-arp").or(v.strict_arp);
    v.exclude_cidrs = flags.list("ipvs-exclude-cidrs").or(v.exclude_cidrs.take());
    for (field, name) in [(&mut v.tcp_timeout, "ipvs-tcp-timeout"), (&mut v.tcp_fin_timeout, "ipvs-tcpfin-timeout"), (&mut v.udp_timeout, "ipvs-udp-timeout")] {
        *field = flags.duration(name).or(*field);
    }
    common.masquerade_all = flags.bool("masquerade-all").unwrap_or(common.masquerade_all);
    // Upstream's processV1Alpha1Flags: the sync flags of the mode given.
    let ipvs = mode(&c) == "ipvs";
    let family = if ipvs { "ipvs" } else { "iptables" };
    common.sync = flags.duration(&format!("{family}-sync-period")).unwrap_or(common.sync);
    common.min_sync = flags.duration(&format!("{family}-min-sync-period")).unwrap_or(common.min_sync);
    // The deprecated port flags count only without --write-config-to.
    if !flags.changed("write-config-to") {
        for (field, name) in [(&mut c.healthz_bind_address, "healthz-port"), (&mut c.metrics_bind_address, "metrics-port")] {
            let port = flags.int32(name).unwrap_or(if name == "healthz-port" { i32::from(HEALTHZ_PORT) } else { i32::from(METRICS_PORT) });
            let addr = field.clone().unwrap_or_default();
            *field = Some(match u16::try_from(port) {
                Ok(0) => String::new(),
                Ok(p) => append_port_if_needed(&addr, p),
                Err(_) => addr,
            });
        }
    }
    always(&mut c, flags)?;
    Ok(finish(c, common))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(args.iter().map(|a| a.to_string())).unwrap()
    }

    #[test]
    fn defaults_are_upstream_s() {
        let c = from_flags(&flags(&["--write-config-to=x"])).unwrap();
        assert_eq!(c.mode.as_deref(), Some("iptables"));
        assert_eq!(c.healthz_bind_address.as_deref(), Some("0.0.0.0:10256"));
        assert_eq!(c.metrics_bind_address.as_deref(), Some("127.0.0.1:10249"));
        assert_eq!(c.oom_score_adj, Some(-999));
        assert_eq!(c.config_sync_period, Some(GoDuration::from_secs(900)));
        let i = c.iptables.unwrap();
        assert_eq!((i.sync_period, i.min_sync_period), (Some(GoDuration::from_secs(30)), Some(GoDuration::from_secs(1))));
        assert_eq!(c.nftables.unwrap().sync_period, Some(GoDuration(0)), "only the mode's section carries sync periods");
        assert_eq!(c.detect_local_mode.as_deref(), Some("ClusterCIDR"));
    }

    #[test]
    fn sync_flags_follow_the_mode() {
        let c = from_flags(&flags(&["--proxy-mode=nftables", "--iptables-sync-period=7s", "--masquerade-all"])).unwrap();
        let n = c.nftables.unwrap();
        assert_eq!((n.sync_period, n.masquerade_all), (Some(GoDuration::from_secs(7)), Some(true)));
        assert_eq!(c.node_port_addresses, Some(vec!["primary".to_string()]));
        let c = from_flags(&flags(&["--proxy-mode=ipvs", "--iptables-sync-period=7s", "--ipvs-min-sync-period=2s"])).unwrap();
        let v = c.ipvs.unwrap();
        assert_eq!((v.sync_period, v.min_sync_period), (Some(GoDuration::from_secs(30)), Some(GoDuration::from_secs(2))));
    }

    #[test]
    fn a_file_wins_over_configuration_flags_but_not_logging_or_hostname() {
        let file = KubeProxyConfiguration { mode: Some("ipvs".into()), ..Default::default() };
        let c = from_file(file, &flags(&["--config=c", "--proxy-mode=nftables", "-v=4", "--hostname-override= Node-A "])).unwrap();
        assert_eq!(c.mode.as_deref(), Some("ipvs"));
        assert_eq!(c.logging.unwrap().verbosity, Some(4));
        assert_eq!(c.hostname_override.as_deref(), Some("node-a"));
        let v = c.ipvs.unwrap();
        assert_eq!(v.min_sync_period, Some(GoDuration(0)), "IPVS mode's own default from a file");
    }

    #[test]
    fn bare_addresses_get_the_default_port_and_ipv6_bind_addresses_ipv6_servers() {
        let file = KubeProxyConfiguration { bind_address: Some("::1".into()), healthz_bind_address: Some("::2".into()), ..Default::default() };
        let c = from_file(file, &Flags::default()).unwrap();
        assert_eq!(c.healthz_bind_address.as_deref(), Some("[::2]:10256"));
        assert_eq!(c.metrics_bind_address.as_deref(), Some("[::1]:10249"));
        let c = from_flags(&flags(&["--healthz-bind-address=10.0.0.1", "--metrics-port=0"])).unwrap();
        assert_eq!(c.healthz_bind_address.as_deref(), Some("10.0.0.1:10256"));
        assert_eq!(c.metrics_bind_address.as_deref(), Some(""), "port 0 turns the server off");
    }
}
