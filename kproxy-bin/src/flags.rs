//! Command-line flags, spelled as kube-proxy's.

use clap::Parser;

/// kproxy: a Kubernetes service proxy, a drop-in replacement for kube-proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "kproxy", version, about)]
pub struct Flags {
    /// The path to a KubeProxyConfiguration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Which proxy mode to use: nftables, iptables or ipvs.
    #[arg(long = "proxy-mode", value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// Path to a kubeconfig file.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<String>,
    /// The address of the Kubernetes API server (overrides the kubeconfig).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// The node name to use instead of the hostname.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// The cluster's pod CIDRs (comma-separated for dual-stack).
    #[arg(long = "cluster-cidr", value_name = "CIDRS")]
    pub cluster_cidr: Option<String>,
    /// NodePort addresses: CIDRs or `primary`, comma-separated.
    #[arg(long = "nodeport-addresses", value_name = "LIST")]
    pub nodeport_addresses: Option<String>,
    /// The health server's address.
    #[arg(long = "healthz-bind-address", value_name = "ADDR")]
    pub healthz_bind_address: Option<String>,
    /// The metrics server's address.
    #[arg(long = "metrics-bind-address", value_name = "ADDR")]
    pub metrics_bind_address: Option<String>,
    /// Serve NodePorts on 127.0.0.1 in iptables mode (IPv4), when
    /// nodePortAddresses holds loopback (as when unset) [default: true].
    #[arg(long = "iptables-localhost-nodeports", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub iptables_localhost_nodeports: Option<bool>,
    /// IPVS mode: the scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh).
    #[arg(long = "ipvs-scheduler", value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,
    /// IPVS mode: keep the node from answering ARP for service addresses.
    #[arg(long = "ipvs-strict-arp", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ipvs_strict_arp: Option<bool>,
    /// IPVS mode: virtual servers in these CIDRs are left alone (comma-separated).
    #[arg(long = "ipvs-exclude-cidrs", value_name = "CIDRS")]
    pub ipvs_exclude_cidrs: Option<String>,
    /// IPVS mode: idle timeout of TCP connections (0 leaves it alone).
    #[arg(long = "ipvs-tcp-timeout", value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,
    /// IPVS mode: timeout of TCP connections after a FIN (0 leaves it alone).
    #[arg(long = "ipvs-tcpfin-timeout", value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,
    /// IPVS mode: timeout of UDP flows (0 leaves it alone).
    #[arg(long = "ipvs-udp-timeout", value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,
    /// Masquerade all traffic to ClusterIPs.
    #[arg(long = "masquerade-all", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,
    /// Conntrack entries per CPU (0 leaves the table size alone).
    #[arg(long = "conntrack-max-per-core", value_name = "N")]
    pub conntrack_max_per_core: Option<i32>,
    /// The smallest conntrack table size.
    #[arg(long = "conntrack-min", value_name = "N")]
    pub conntrack_min: Option<i32>,
    /// Idle timeout of established TCP connections (0 leaves it alone).
    #[arg(long = "conntrack-tcp-timeout-established", value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,
    /// Timeout of TCP connections in CLOSE_WAIT (0 leaves it alone).
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,
    /// Let conntrack accept out-of-window TCP packets.
    #[arg(long = "conntrack-tcp-be-liberal", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// Timeout of unreplied UDP flows (0 leaves it alone).
    #[arg(long = "conntrack-udp-timeout", value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,
    /// Timeout of UDP flows with replies (0 leaves it alone).
    #[arg(long = "conntrack-udp-timeout-stream", value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,
    /// Remove every rule any kproxy backend installed, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Hand the node back to upstream kube-proxy: once it serves the node,
    /// remove what only kproxy creates (its nftables tables) and exit.
    /// Everything else kproxy wrote has upstream's names, and upstream
    /// rewrites it.
    #[arg(long = "hand-back")]
    pub hand_back: bool,
    /// Write the effective configuration to FILE and exit.
    #[arg(long = "write-config-to", value_name = "FILE")]
    pub write_config_to: Option<String>,
    /// Take the cluster state from a directory of YAML manifests (Service,
    /// EndpointSlice and Node documents) instead of an API server.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<String>,
    /// Print what the first sync would program and exit, without touching
    /// the kernel (no root needed).
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Log verbosity, as kube-proxy's -v.
    #[arg(short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u32>,
    /// Log format: text or json.
    #[arg(long = "logging-format", value_name = "FORMAT")]
    pub logging_format: Option<String>,
}
