//! The addresses of this network namespace's interfaces, which
//! `nodePortAddresses` is matched against (upstream matches interfaces,
//! not only the Node object's addresses).

use std::net::IpAddr;

/// IPVS mode's dummy interface: its addresses are Service VIPs, never
/// NodePort addresses.
const IPVS_DUMMY: &str = "kube-ipvs0";

/// Every address of every interface here but the IPVS dummy's, sorted.
/// An error (no permission to list, which does not happen as root) is
/// logged and gives no address.
pub fn local_addresses() -> Vec<IpAddr> {
    addresses(|name| name != IPVS_DUMMY)
}

/// The addresses on IPVS mode's dummy interface (`kube-ipvs0`): the
/// Service addresses IPVS mode binds, sorted.
pub fn ipvs_dummy_addresses() -> Vec<IpAddr> {
    addresses(|name| name == IPVS_DUMMY)
}

fn addresses(keep: impl Fn(&str) -> bool) -> Vec<IpAddr> {
    let list = match nix::ifaddrs::getifaddrs() {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the interfaces' addresses; NodePorts limited by nodePortAddresses are not served");
            return Vec::new();
        }
    };
    let mut out: Vec<IpAddr> = list
        .filter(|a| keep(&a.interface_name))
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_among_the_local_addresses() {
        // Every network namespace has `lo`; it is up wherever tests run
        // as a process with a network (127.0.0.1 is listed once up).
        let all = super::local_addresses();
        let lo_up = std::fs::read_to_string("/sys/class/net/lo/operstate").is_ok_and(|s| s.trim() != "down");
        if lo_up {
            assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates: {all:?}");
    }
}
