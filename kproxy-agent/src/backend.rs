//! From a proxy mode to a proxier: the options every backend shares,
//! resolved per IP family as upstream resolves them (the local-traffic
//! detector, `nodePortAddresses` matched against this node's interfaces),
//! and a builder that picks the mode's backend and its kernel interface.
//!
//! ```no_run
//! # async fn example(node: kproxy_core::NodeInfo) -> Result<(), kproxy_agent::backend::BuildError> {
//! use kproxy_agent::backend::{Backend, Host, Mode, ProxyOptions};
//! use kproxy_core::IpFamily;
//!
//! let options = ProxyOptions::new(Mode::Nftables, "node-a");
//! let backend = Backend::detect(options.mode).await;
//! let proxier = backend.proxier(&options, IpFamily::V4, &Host::here(node))?;
//! # drop(proxier);
//! # Ok(())
//! # }
//! ```

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::{IptablesDataplane, IptablesOptions, IptablesProxier};
use kproxy_backend_ipvs::kernel::{IpvsHost, IpvsKernel};
use kproxy_backend_ipvs::{IpvsDataplane, IpvsOptions, IpvsProxier};
use kproxy_backend_nft::kernel::{Kernel as NftKernelApi, NftKernel};
use kproxy_backend_nft::{NftDataplane, NftOptions, NftProxier};
use kproxy_core::{IpFamily, LocalDetector, NodeInfo, NodePortAddresses, Proxier, ProxierConfig};

/// A proxy mode (kube-proxy's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nftables.
    Nftables,
    /// iptables (upstream's default), with `iptables-legacy` or
    /// `iptables-nft` as the host already uses.
    Iptables,
    /// IPVS (virtual servers over generic netlink, ipsets and a small
    /// iptables ruleset, as upstream).
    Ipvs,
    /// Userspace (kube-proxy's old mode: the proxy forwards each
    /// connection itself). Its backend is written outside this crate, in
    /// `kproxy-userspace`, which [`Backend::proxier`] does not build.
    Userspace,
}

impl Mode {
    /// The mode as the configuration spells it (and `/proxyMode` says).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Iptables => "iptables",
            Mode::Ipvs => "ipvs",
            Mode::Userspace => "userspace",
        }
    }
}

/// How pods are recognised (`detectLocalMode`), before it is resolved for
/// a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectLocal {
    /// No detector.
    None,
    /// Sources in the cluster CIDRs.
    ClusterCidr(Vec<IpNet>),
    /// Sources in the node's pod CIDRs.
    NodeCidr,
    /// Packets from this bridge.
    Bridge(String),
    /// Packets from interfaces with this prefix.
    Prefix(String),
}

/// What every family's proxier is built with, as kube-proxy's
/// configuration states it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyOptions {
    /// The proxy mode.
    pub mode: Mode,
    /// This node's name.
    pub node_name: String,
    /// The local detector.
    pub detect_local: DetectLocal,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// The masquerade mark bit.
    pub masquerade_bit: u8,
    /// NodePort addresses.
    pub node_port_addresses: NodePortAddresses,
    /// iptables mode: `iptables.localhostNodePorts`. Whether NodePorts are
    /// really served on 127.0.0.1 also depends on `nodePortAddresses`:
    /// see [`ProxyOptions::localhost_node_ports`].
    pub localhost_node_ports_wanted: bool,
    /// `conntrack.tcpBeLiberal`: iptables mode then drops no
    /// out-of-window packet (also when the host's sysctl is on, see
    /// [`Host::tcp_be_liberal`]).
    pub tcp_be_liberal: bool,
    /// IPVS mode's options (`ipvs.*`).
    pub ipvs: IpvsOptions,
}

impl ProxyOptions {
    /// Upstream's defaults for `mode` on node `node_name`: no local
    /// detector, mark bit 14, NodePorts on the primary IPs in nftables
    /// mode and on every local address otherwise.
    pub fn new(mode: Mode, node_name: &str) -> ProxyOptions {
        ProxyOptions {
            mode,
            node_name: node_name.to_string(),
            detect_local: DetectLocal::None,
            masquerade_all: false,
            masquerade_bit: 14,
            node_port_addresses: if mode == Mode::Nftables { NodePortAddresses::Primary } else { NodePortAddresses::Cidrs(Vec::new()) },
            localhost_node_ports_wanted: mode == Mode::Iptables,
            tcp_be_liberal: false,
            ipvs: IpvsOptions::default(),
        }
    }

    /// Whether iptables mode serves NodePorts on 127.0.0.1 on `node`:
    /// `localhostNodePorts` is on and the IPv4 NodePort ranges hold a
    /// loopback address (true when they are unset), as upstream decides.
    pub fn localhost_node_ports(&self, node: &NodeInfo) -> bool {
        self.localhost_node_ports_wanted && self.node_port_addresses.contains_ipv4_loopback(&node.ips)
    }

    /// Upstream's warnings about `nodePortAddresses` for these families,
    /// to log once at start.
    pub fn node_port_warnings(&self, families: &[IpFamily]) -> Vec<String> {
        if self.node_port_addresses == NodePortAddresses::Cidrs(Vec::new()) {
            return vec!["nodePortAddresses is unset; NodePort connections will be accepted on all local IPs. Consider using `--nodeport-addresses primary`".into()];
        }
        families.iter().filter_map(|f| self.node_port_addresses.warning(*f)).collect()
    }

    /// Where the health-check NodePorts listen on `host` (see
    /// [`HealthCheckServers`](crate::health::HealthCheckServers)): on the
    /// NodePort addresses, or on every address (`None`) when a family
    /// serves NodePorts on all of them, as upstream; a list that matches
    /// no address opens no listener.
    pub fn health_check_addresses(&self, host: &Host, families: &[IpFamily]) -> Option<Vec<IpAddr>> {
        let mut out = Vec::new();
        for &family in families {
            if self.node_port_addresses.matches_all(family, &host.node.ips) {
                return None;
            }
            out.extend(self.node_port_addresses.resolve(family, &host.node.ips, &host.local_ips));
        }
        Some(out)
    }

    /// The proxier configuration for `family` on `node`, whose interfaces
    /// have `local_ips` (`nodePortAddresses` is matched against them, as
    /// upstream does).
    pub fn proxier_config(&self, family: IpFamily, node: &NodeInfo, local_ips: &[IpAddr]) -> ProxierConfig {
        let node_ips: Vec<_> = node.ips.iter().copied().filter(|ip| family.contains(*ip)).collect();
        let of_family = |nets: &[IpNet]| nets.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect::<Vec<_>>();
        let local_detector = match &self.detect_local {
            DetectLocal::None => LocalDetector::None,
            DetectLocal::ClusterCidr(nets) => LocalDetector::ClusterCidr(of_family(nets)),
            DetectLocal::NodeCidr => LocalDetector::NodeCidr(of_family(&node.pod_cidrs)),
            DetectLocal::Bridge(b) => LocalDetector::BridgeInterface(b.clone()),
            DetectLocal::Prefix(p) => LocalDetector::InterfaceNamePrefix(p.clone()),
        };
        ProxierConfig {
            family,
            masquerade_all: self.masquerade_all,
            masquerade_bit: self.masquerade_bit,
            local_detector,
            node_port_ips: self.node_port_addresses.resolve(family, &node.ips, local_ips),
            node_ports_on_every_address: self.node_port_addresses.matches_all(family, &node.ips),
            node_ips,
        }
    }
}

/// The node a proxier runs on: its Node object and its interfaces'
/// addresses.
#[derive(Debug, Clone)]
pub struct Host {
    /// What the Node object says.
    pub node: NodeInfo,
    /// The addresses of this namespace's interfaces.
    pub local_ips: Vec<IpAddr>,
    /// `nf_conntrack_tcp_be_liberal` is on here.
    pub tcp_be_liberal: bool,
    /// Upstream's nfacct counters exist here (see [`Host::counting`]).
    pub nfacct: bool,
}

impl Host {
    /// `node`, on this network namespace's interfaces and sysctls.
    pub fn here(node: NodeInfo) -> Host {
        Host { node, local_ips: crate::interfaces::local_addresses(), tcp_be_liberal: tcp_be_liberal(Path::new("/")), nfacct: false }
    }

    /// In iptables mode, creates upstream's two nfacct counters, as its
    /// full syncs do; the rules then count into them. A kernel without
    /// `nfnetlink_acct` is an error line and no counting, as upstream.
    pub fn counting(mut self, mode: Mode) -> Host {
        if mode == Mode::Iptables {
            let created = kproxy_netfilter::Nfacct::open().and_then(|mut acct| {
                acct.ensure(kproxy_backend_iptables::names::NFACCT_INVALID_DROPPED)?;
                acct.ensure(kproxy_backend_iptables::names::NFACCT_LOCALHOST_NODEPORTS)
            });
            match created {
                Ok(()) => self.nfacct = true,
                Err(e) => tracing::error!(error = %e.0, "Failed to create nfacct counters; the corresponding metrics will not be updated"),
            }
        }
        self
    }

    /// `node` as a dry run pictures it: its own addresses are its
    /// interfaces'.
    pub fn pictured(node: NodeInfo) -> Host {
        let local_ips = node.ips.clone();
        Host { node, local_ips, tcp_be_liberal: false, nfacct: false }
    }

    /// The proxier configuration of `options` for `family` here.
    pub fn config(&self, options: &ProxyOptions, family: IpFamily) -> ProxierConfig {
        options.proxier_config(family, &self.node, &self.local_ips)
    }
}

/// Whether conntrack under `root` is liberal with out-of-window TCP
/// packets (`nf_conntrack_tcp_be_liberal` reads non-zero), set by kproxy
/// or by anyone else: upstream reads it back the same way.
pub fn tcp_be_liberal(root: &Path) -> bool {
    let path = root.join("proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal");
    std::fs::read_to_string(path).ok().and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|v| v != 0)
}

/// Why a proxier could not be built: a configuration its backend refuses,
/// or a kernel interface that cannot be opened. One line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

fn refused(family: IpFamily, e: impl std::fmt::Display) -> BuildError {
    BuildError(format!("{family:?} proxier: {e}"))
}

/// The iptables proxier for `family`, on `kernel`.
pub fn iptables_proxier<K: kproxy_backend_iptables::kernel::Kernel + 'static>(options: &ProxyOptions, family: IpFamily, host: &Host, kernel: K) -> Result<IptablesProxier<K>, BuildError> {
    let backend_options = IptablesOptions {
        nfacct: host.nfacct,
        localhost_node_ports: options.localhost_node_ports(&host.node),
        tcp_be_liberal: options.tcp_be_liberal || host.tcp_be_liberal,
        ..IptablesOptions::default()
    };
    IptablesDataplane::proxier(&options.node_name, host.config(options, family), kernel, backend_options).map_err(|e| refused(family, e))
}

/// The IPVS proxier for `family`, on `kernel`.
pub fn ipvs_proxier<K: IpvsKernel + 'static>(options: &ProxyOptions, family: IpFamily, host: &Host, kernel: K) -> Result<IpvsProxier<K>, BuildError> {
    IpvsDataplane::proxier(&options.node_name, host.config(options, family), kernel, options.ipvs.clone()).map_err(|e| refused(family, e))
}

/// The nftables proxier for `family`, on `kernel`.
pub fn nft_proxier<K: NftKernelApi + 'static>(options: &ProxyOptions, family: IpFamily, host: &Host, kernel: K) -> Result<NftProxier<K>, BuildError> {
    NftDataplane::proxier(&options.node_name, host.config(options, family), kernel, NftOptions::default()).map_err(|e| refused(family, e))
}

/// A mode's backend on this host's kernel: for iptables and IPVS modes,
/// with the iptables flavour (`iptables-nft` or `iptables-legacy`) the
/// host already uses, picked once for every family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    mode: Mode,
    flavour: Option<Flavour>,
}

impl Backend {
    /// The backend of `mode`; for iptables and IPVS modes, detects the
    /// flavour (as upstream does, by which one holds more rules) and logs
    /// the choice.
    pub async fn detect(mode: Mode) -> Backend {
        let flavour = match mode {
            Mode::Iptables | Mode::Ipvs => {
                let (flavour, why) = Flavour::detect(None).await;
                tracing::info!("using iptables-{} ({why})", flavour.name());
                Some(flavour)
            }
            Mode::Nftables | Mode::Userspace => None,
        };
        Backend { mode, flavour }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The iptables flavour, in iptables and IPVS modes.
    pub fn flavour(&self) -> Option<Flavour> {
        self.flavour
    }

    /// A proxier for `family` on `host` with `options` (whose mode must be
    /// this backend's), programming the kernel of this network namespace.
    pub fn proxier(&self, options: &ProxyOptions, family: IpFamily, host: &Host) -> Result<Box<dyn Proxier>, BuildError> {
        if options.mode != self.mode {
            return Err(BuildError(format!("options for {} mode given to the {} backend", options.mode.name(), self.mode.name())));
        }
        Ok(match (self.mode, self.flavour) {
            (Mode::Userspace, _) => return Err(BuildError("userspace mode's backend is not part of kproxy-agent: build it with kproxy_userspace::UserspaceDataplane::for_host".into())),
            (Mode::Nftables, _) => Box::new(nft_proxier(options, family, host, NftKernel::new().map_err(|e| refused(family, e))?)?),
            (Mode::Iptables, Some(flavour)) => Box::new(iptables_proxier(options, family, host, IptablesCli::new(flavour, None))?),
            (Mode::Ipvs, Some(flavour)) => Box::new(ipvs_proxier(options, family, host, IpvsHost::new(None, IptablesCli::new(flavour, None)))?),
            (mode, None) => return Err(BuildError(format!("{} mode needs an iptables flavour; build the backend with Backend::detect", mode.name()))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo { ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()], pod_cidrs: vec!["10.244.1.0/24".parse().unwrap(), "fd00:244::/64".parse().unwrap()], ..NodeInfo::default() }
    }

    #[test]
    fn the_node_cidr_detector_takes_the_family_s_pod_cidr() {
        let options = ProxyOptions { detect_local: DetectLocal::NodeCidr, ..ProxyOptions::new(Mode::Nftables, "n") };
        let v6 = options.proxier_config(IpFamily::V6, &node(), &[]);
        assert_eq!(v6.local_detector, LocalDetector::NodeCidr(vec!["fd00:244::/64".parse().unwrap()]));
        assert_eq!(v6.node_ips, vec!["fd00::5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn localhost_node_ports_need_iptables_mode_and_a_loopback_range() {
        assert!(ProxyOptions::new(Mode::Iptables, "n").localhost_node_ports(&node()));
        assert!(!ProxyOptions::new(Mode::Nftables, "n").localhost_node_ports(&node()));
        let primary = ProxyOptions { node_port_addresses: NodePortAddresses::Primary, ..ProxyOptions::new(Mode::Iptables, "n") };
        assert!(!primary.localhost_node_ports(&node()));
    }

    #[test]
    fn a_backend_refuses_another_mode_s_options_and_an_iptables_mode_without_a_flavour() {
        let host = Host::pictured(node());
        let nft = Backend { mode: Mode::Nftables, flavour: None };
        let err = nft.proxier(&ProxyOptions::new(Mode::Ipvs, "n"), IpFamily::V4, &host).err().unwrap();
        assert_eq!(err.to_string(), "options for ipvs mode given to the nftables backend");
        let iptables = Backend { mode: Mode::Iptables, flavour: None };
        let err = iptables.proxier(&ProxyOptions::new(Mode::Iptables, "n"), IpFamily::V4, &host).err().unwrap();
        assert!(err.to_string().contains("needs an iptables flavour"), "{err}");
    }

    #[test]
    fn a_bad_configuration_is_a_one_line_error_naming_the_family() {
        let options = ProxyOptions { masquerade_bit: 40, ..ProxyOptions::new(Mode::Iptables, "n") };
        let err = iptables_proxier(&options, IpFamily::V4, &Host::pictured(node()), kproxy_backend_iptables::fake::FakeIptables::new()).err().unwrap();
        assert!(err.to_string().starts_with("V4 proxier: ") && !err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn tcp_be_liberal_reads_the_sysctl_under_a_root() {
        let root = std::env::temp_dir().join(format!("kproxy-agent-liberal-{}", std::process::id()));
        let dir = root.join("proc/sys/net/netfilter");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!tcp_be_liberal(&root), "absent");
        std::fs::write(dir.join("nf_conntrack_tcp_be_liberal"), "0\n").unwrap();
        assert!(!tcp_be_liberal(&root));
        std::fs::write(dir.join("nf_conntrack_tcp_be_liberal"), "1\n").unwrap();
        assert!(tcp_be_liberal(&root));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
