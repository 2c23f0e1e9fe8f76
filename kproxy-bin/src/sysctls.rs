//! The conntrack sysctls kube-proxy sets at start: the table size
//! (`nf_conntrack_max`, and the hash size with it) and the TCP and UDP
//! timeouts, from the `conntrack` section and the `--conntrack-*` flags.
//!
//! Resolving is pure; [`apply`] writes under a root directory (`/` in
//! production) and only what differs. A table size the kernel will not
//! let this namespace change (it is read-only outside the initial network
//! namespace, and sysfs may be mounted read-only) is a warning, as
//! upstream; a timeout that cannot be set is an error.

use std::path::Path;

use crate::config::{ConntrackConfiguration, GoDuration};

/// The values to set; `None` leaves a sysctl as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSysctls {
    /// `nf_conntrack_max`: max(maxPerCore × CPUs, min), or None when
    /// maxPerCore is 0.
    pub max: Option<u64>,
    /// `nf_conntrack_tcp_timeout_established`, seconds.
    pub tcp_established: Option<u64>,
    /// `nf_conntrack_tcp_timeout_close_wait`, seconds.
    pub tcp_close_wait: Option<u64>,
    /// `nf_conntrack_tcp_be_liberal` = 1 when set.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`, seconds.
    pub udp: Option<u64>,
    /// `nf_conntrack_udp_timeout_stream`, seconds.
    pub udp_stream: Option<u64>,
}

/// A timeout in whole seconds; zero (or unset) leaves the sysctl alone.
fn seconds(d: Option<GoDuration>) -> Option<u64> {
    d.and_then(GoDuration::to_std).map(|d| d.as_secs()).filter(|s| *s > 0)
}

impl ConntrackSysctls {
    /// The sysctls of a defaulted `conntrack` section, for a machine with
    /// `cpus` CPUs, by upstream's rules.
    pub fn resolve(c: &ConntrackConfiguration, cpus: u64) -> Self {
        let max_per_core = u64::try_from(c.max_per_core.unwrap_or(32_768)).unwrap_or(0);
        let min = u64::try_from(c.min.unwrap_or(131_072)).unwrap_or(0);
        ConntrackSysctls {
            max: (max_per_core > 0).then(|| (max_per_core * cpus).max(min)),
            tcp_established: seconds(c.tcp_established_timeout),
            tcp_close_wait: seconds(c.tcp_close_wait_timeout),
            tcp_be_liberal: c.tcp_be_liberal.unwrap_or(false),
            udp: seconds(c.udp_timeout),
            udp_stream: seconds(c.udp_stream_timeout),
        }
    }

    /// The per-namespace sysctls (under `net/netfilter`) and their values.
    fn timeouts(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        let mut put = |name, v: Option<u64>| out.extend(v.map(|v| (name, v)));
        put("nf_conntrack_tcp_timeout_established", self.tcp_established);
        put("nf_conntrack_tcp_timeout_close_wait", self.tcp_close_wait);
        put("nf_conntrack_tcp_be_liberal", self.tcp_be_liberal.then_some(1));
        put("nf_conntrack_udp_timeout", self.udp);
        put("nf_conntrack_udp_timeout_stream", self.udp_stream);
        out
    }
}

const NETFILTER: &str = "proc/sys/net/netfilter";
const HASHSIZE: &str = "sys/module/nf_conntrack/parameters/hashsize";

fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes `value` to `path` unless it already holds it; says what changed.
fn set(path: &Path, value: u64) -> Result<Option<String>, String> {
    if read(path) == Some(value) {
        return Ok(None);
    }
    std::fs::write(path, value.to_string()).map_err(|e| format!("cannot set {} to {value}: {e}", path.display()))?;
    Ok(Some(format!("{} = {value}", path.display())))
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Sysctls changed, as `path = value`.
    pub changed: Vec<String>,
    /// Table-size changes the kernel refused.
    pub warnings: Vec<String>,
}

/// Applies `s` under `root`.
pub fn apply(root: &Path, s: &ConntrackSysctls) -> Result<Applied, String> {
    let mut done = Applied::default();
    if let Some(max) = s.max {
        match set(&root.join(NETFILTER).join("nf_conntrack_max"), max) {
            Ok(changed) => done.changed.extend(changed),
            Err(e) => done.warnings.push(format!("{e} (the table size is the host's to set; problems may arise later)")),
        }
        let hashsize = root.join(HASHSIZE);
        if read(&hashsize).is_some_and(|h| h < max / 4) {
            match set(&hashsize, max / 4) {
                Ok(changed) => done.changed.extend(changed),
                Err(e) => done.warnings.push(format!("{e} (sysfs read-only, or not the host's network namespace)")),
            }
        }
    }
    for (name, value) in s.timeouts() {
        done.changed.extend(set(&root.join(NETFILTER).join(name), value)?);
    }
    Ok(done)
}

const ROUTE_LOCALNET: &str = "proc/sys/net/ipv4/conf/all/route_localnet";

/// Sets `net.ipv4.conf.all.route_localnet` to 1 under `root`, which
/// localhost NodePorts need (the backend adds the safeguard rule).
pub fn route_localnet(root: &Path) -> Result<Option<String>, String> {
    set(&root.join(ROUTE_LOCALNET), 1)
}

/// Sets `route_localnet` back to 0 under `root` (`--cleanup`, once the
/// NodePort rules and their safeguard are gone).
pub fn route_localnet_off(root: &Path) -> Result<Option<String>, String> {
    set(&root.join(ROUTE_LOCALNET), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(c: ConntrackConfiguration) -> ConntrackConfiguration {
        let file = crate::config::KubeProxyConfiguration { conntrack: Some(c), ..Default::default() };
        crate::config::defaults::v1alpha1(file).conntrack.unwrap()
    }

    #[test]
    fn defaults_are_upstreams() {
        let s = ConntrackSysctls::resolve(&defaulted(ConntrackConfiguration::default()), 2);
        assert_eq!(
            s,
            ConntrackSysctls { max: Some(131_072), tcp_established: Some(86_400), tcp_close_wait: Some(3600), tcp_be_liberal: false, udp: None, udp_stream: None }
        );
        let big = ConntrackSysctls::resolve(&defaulted(ConntrackConfiguration::default()), 64);
        assert_eq!(big.max, Some(64 * 32_768), "scaled by CPUs above the minimum");
    }

    #[test]
    fn zero_leaves_things_alone() {
        let file = ConntrackConfiguration {
            max_per_core: Some(0),
            tcp_established_timeout: Some(GoDuration(0)),
            tcp_close_wait_timeout: Some(GoDuration::from_secs(600)),
            udp_timeout: Some(GoDuration::from_secs(45)),
            udp_stream_timeout: Some(GoDuration::from_secs(120)),
            tcp_be_liberal: Some(true),
            ..Default::default()
        };
        let s = ConntrackSysctls::resolve(&defaulted(file), 2);
        assert_eq!(
            s,
            ConntrackSysctls { max: None, tcp_established: None, tcp_close_wait: Some(600), tcp_be_liberal: true, udp: Some(45), udp_stream: Some(120) }
        );
    }

    /// A fake root with the files kube-proxy touches.
    fn fake_root(max: u64, hashsize: u64) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("kproxy-sysctls-{}-{max}-{hashsize}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(NETFILTER)).unwrap();
        std::fs::create_dir_all(root.join(HASHSIZE).parent().unwrap()).unwrap();
        std::fs::write(root.join(NETFILTER).join("nf_conntrack_max"), format!("{max}\n")).unwrap();
        std::fs::write(root.join(HASHSIZE), format!("{hashsize}\n")).unwrap();
        for name in ["nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait"] {
            std::fs::write(root.join(NETFILTER).join(name), "432000\n").unwrap();
        }
        root
    }

    #[test]
    fn apply_writes_what_differs_and_raises_the_hash_size() {
        let root = fake_root(65_536, 16_384);
        let s = ConntrackSysctls { max: Some(131_072), tcp_established: Some(86_400), tcp_close_wait: Some(432_000), ..Default::default() };
        let done = apply(&root, &s).unwrap();
        assert_eq!(done.changed.len(), 3, "{done:?}");
        assert!(done.warnings.is_empty());
        assert_eq!(read(&root.join(NETFILTER).join("nf_conntrack_max")), Some(131_072));
        assert_eq!(read(&root.join(HASHSIZE)), Some(32_768));
        assert_eq!(read(&root.join(NETFILTER).join("nf_conntrack_tcp_timeout_established")), Some(86_400));
        assert_eq!(apply(&root, &s).unwrap(), Applied::default(), "a second run changes nothing");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_unwritable_table_size_warns_but_a_timeout_fails() {
        let root = fake_root(1, 1);
        // A directory where a file should be: every write fails.
        for name in ["nf_conntrack_max", "nf_conntrack_udp_timeout"] {
            let p = root.join(NETFILTER).join(name);
            let _ = std::fs::remove_file(&p);
            std::fs::create_dir_all(&p).unwrap();
        }
        let done = apply(&root, &ConntrackSysctls { max: Some(131_072), ..Default::default() }).unwrap();
        assert_eq!(done.warnings.len(), 1, "{done:?}");
        let e = apply(&root, &ConntrackSysctls { udp: Some(30), ..Default::default() }).unwrap_err();
        assert!(e.contains("nf_conntrack_udp_timeout") && e.contains("30"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn route_localnet_is_set_once() {
        let root = fake_root(1, 1);
        let path = root.join("proc/sys/net/ipv4/conf/all/route_localnet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "0\n").unwrap();
        assert!(route_localnet(&root).unwrap().is_some());
        assert_eq!(read(&path), Some(1));
        assert_eq!(route_localnet(&root).unwrap(), None, "already set: nothing written");
        let _ = std::fs::remove_dir_all(&root);
    }
}
