//! The backend of a mode, built for one IP family on one node: what the
//! binary's runs, dry runs, cleanup and takeover construct proxiers with.

use std::path::Path;

use anyhow::Result;
use kproxy_backend_iptables::{IptablesOptions, IptablesProxier, IptablesDataplane};
use kproxy_backend_ipvs::kernel::IpvsKernel;
use kproxy_backend_ipvs::{IpvsDataplane, IpvsProxier};
use kproxy_backend_nft::kernel::Kernel;
use kproxy_backend_nft::{NftOptions, NftProxier, NftDataplane};
use kproxy_core::{IpFamily, NodeInfo};

use crate::settings::{Mode, Settings};
use crate::sysctls;

/// The iptables proxier for `family`.
pub(crate) fn iptables_proxier<K: kproxy_backend_iptables::kernel::Kernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<IptablesProxier<K>> {
    let options = IptablesOptions {
        nfacct: host.nfacct,
        localhost_node_ports: settings.localhost_node_ports(&host.node),
        tcp_be_liberal: settings.conntrack.tcp_be_liberal || host.tcp_be_liberal,
        ..IptablesOptions::default()
    };
    Ok(IptablesDataplane::proxier(&settings.node_name, host.config(settings, family), kernel, options)?)
}

/// The IPVS proxier for `family`.
pub(crate) fn ipvs_proxier<K: IpvsKernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<IpvsProxier<K>> {
    Ok(IpvsDataplane::proxier(&settings.node_name, host.config(settings, family), kernel, settings.ipvs.clone())?)
}

/// The nftables proxier for `family`.
pub(crate) fn nft_proxier<K: Kernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<NftProxier<K>> {
    Ok(NftDataplane::proxier(&settings.node_name, host.config(settings, family), kernel, NftOptions::default())?)
}

/// The node a proxier runs on: its Node object and its interfaces'
/// addresses.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// What the Node object says.
    pub node: NodeInfo,
    /// The addresses of this namespace's interfaces.
    pub local_ips: Vec<std::net::IpAddr>,
    /// `nf_conntrack_tcp_be_liberal` is on here.
    pub tcp_be_liberal: bool,
    /// upstream's nfacct counters exist here (iptables mode creates them).
    pub nfacct: bool,
}

impl Host {
    /// `node`, on this namespace's interfaces.
    pub fn here(node: NodeInfo) -> Host {
        Host { node, local_ips: crate::interfaces::local_addresses(), tcp_be_liberal: sysctls::tcp_be_liberal(Path::new("/")), nfacct: false }
    }

    /// In iptables mode, creates upstream's two nfacct counters, as its
    /// full syncs do; the rules then count into them and `/metrics`
    /// exports them. A kernel without `nfnetlink_acct` is an error line
    /// and no counting, as upstream.
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

    /// `node` as the dry run pictures it: its own addresses are its
    /// interfaces'.
    pub fn pictured(node: NodeInfo) -> Host {
        let local_ips = node.ips.clone();
        Host { node, local_ips, tcp_be_liberal: false, nfacct: false }
    }

    fn config(&self, settings: &Settings, family: IpFamily) -> kproxy_core::ProxierConfig {
        settings.proxier_config(family, &self.node, &self.local_ips)
    }
}
