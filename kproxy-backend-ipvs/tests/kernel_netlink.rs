//! The IPVS generic netlink layer against a real kernel, each test in a
//! network namespace of its own (IPVS tables are per namespace).
//!
//! The machines' kernel has no IPVS: these run in a VM
//! (`scripts/ipvs-vm.sh`), and elsewhere say so in one line and return.
//! They need root, and panic in the VM if IPVS is missing there.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use kproxy_backend_ipvs::model::{Op, RealServer, RealServerStatus, RsKey, Scheduler, Timeouts, VirtualServer, VsKey};
use kproxy_backend_ipvs::netlink::IpvsSocket;
use kproxy_core::Protocol;
use kproxy_testkit::{kernel_tests_enabled, Netns};

const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;

/// Whether this test can run here (see the module's documentation).
fn ipvs_tests_enabled(test: &str) -> bool {
    if !std::path::Path::new("/proc/net/ip_vs").exists() {
        if std::env::var_os("KPROXY_IN_VM").is_some() {
            panic!("{test}: in the VM, but /proc/net/ip_vs is missing (ip_vs not loaded)");
        }
        println!("IPVS kernel tests run in the VM (scripts/ipvs-vm.sh): {test}");
        return false;
    }
    kernel_tests_enabled(test)
}

fn open() -> (Netns, IpvsSocket) {
    let ns = Netns::new("ipvs").unwrap();
    let ipvs = IpvsSocket::open_in_netns(ns.name()).unwrap();
    (ns, ipvs)
}

fn vs(protocol: Protocol, addr: &str, port: u16, scheduler: Scheduler, persistence: Option<u32>) -> VirtualServer {
    VirtualServer { key: VsKey { protocol, addr: addr.parse().unwrap(), port }, scheduler, persistence }
}

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer { key: RsKey { addr: addr.parse().unwrap(), port }, weight }
}

fn servers(ipvs: &mut IpvsSocket, key: &VsKey) -> Vec<RealServer> {
    ipvs.destinations(key).unwrap().into_iter().map(|s: RealServerStatus| s.server).collect()
}

/// The whitespace-separated words of the `ipvsadm -Ln` line starting
/// with `prefix`.
fn ipvsadm_line(listing: &str, prefix: &str) -> Vec<String> {
    let line = listing.lines().map(str::trim).find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in\n{listing}"));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn services_and_real_servers_list_as_added() {
    if !ipvs_tests_enabled("services_and_real_servers_list_as_added") {
        return;
    }
    let (ns, mut ipvs) = open();
    let table: BTreeMap<VirtualServer, Vec<RealServer>> = [
        (vs(Protocol::Tcp, "10.96.0.1", 443, Scheduler::Rr, None), vec![rs("10.1.0.1", 6443, 1), rs("10.1.0.2", 6443, 1)]),
        (vs(Protocol::Udp, "10.96.0.10", 53, Scheduler::Wrr, None), vec![rs("10.1.0.3", 53, 5), rs("10.1.0.4", 53, 0)]),
        (vs(Protocol::Sctp, "10.96.0.20", 9000, Scheduler::Lc, None), vec![rs("10.1.0.5", 9000, 1)]),
        (vs(Protocol::Tcp, "10.96.0.30", 80, Scheduler::Sh, Some(10800)), vec![rs("10.1.0.6", 8080, 1), rs("10.1.0.7", 8080, 2)]),
        (vs(Protocol::Tcp, "fd00:96::1", 443, Scheduler::Mh, None), vec![rs("fd00:1::1", 6443, 1), rs("fd00:1::2", 6443, 3)]),
        (vs(Protocol::Udp, "fd00:96::a", 53, Scheduler::Wlc, Some(60)), vec![rs("fd00:1::3", 5353, 1)]),
        (vs(Protocol::Sctp, "fd00:96::14", 9000, Scheduler::Dh, None), vec![]),
    ]
    .into_iter()
    .collect();
    let mut ops = Vec::new();
    for (v, dests) in &table {
        ops.push(Op::AddService(*v));
        ops.extend(dests.iter().map(|d| Op::AddDest(v.key, *d)));
    }
    let applied = ipvs.apply(&ops).unwrap();
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert_eq!(applied.messages, ops.len());
    // A firewall-mark service, made by ipvsadm, is not part of the model.
    ns.exec(&["ipvsadm", "-A", "-f", "7", "-s", "rr"]).unwrap();

    assert_eq!(ipvs.services().unwrap(), table.keys().copied().collect::<Vec<_>>());
    for (v, dests) in &table {
        let got = ipvs.destinations(&v.key).unwrap();
        assert!(got.iter().all(|s| s.active == 0 && s.inactive == 0), "{got:?}");
        let mut want = dests.clone();
        want.sort();
        assert_eq!(got.iter().map(|s| s.server).collect::<Vec<_>>(), want, "{}", v.key);
    }
    // A service the kernel does not have has no real servers.
    let absent = VsKey { protocol: Protocol::Tcp, addr: "10.96.9.9".parse().unwrap(), port: 1 };
    assert!(ipvs.destinations(&absent).unwrap().is_empty());

    let listing = ns.exec(&["ipvsadm", "-Ln"]).unwrap();
    assert_eq!(ipvsadm_line(&listing, "TCP  10.96.0.1:443"), ["TCP", "10.96.0.1:443", "rr"]);
    assert_eq!(ipvsadm_line(&listing, "TCP  10.96.0.30:80"), ["TCP", "10.96.0.30:80", "sh", "persistent", "10800"]);
    assert_eq!(ipvsadm_line(&listing, "UDP  [fd00:96::a]:53"), ["UDP", "[fd00:96::a]:53", "wlc", "persistent", "60"]);
    assert_eq!(ipvsadm_line(&listing, "-> 10.1.0.3:53"), ["->", "10.1.0.3:53", "Masq", "5", "0", "0"]);
    assert_eq!(ipvsadm_line(&listing, "-> [fd00:1::2]:6443"), ["->", "[fd00:1::2]:6443", "Masq", "3", "0", "0"]);
    assert!(listing.contains("FWM  7 rr"), "{listing}");
}

#[test]
fn edits_and_deletions_apply_and_refusals_are_reported_per_op() {
    if !ipvs_tests_enabled("edits_and_deletions_apply_and_refusals_are_reported_per_op") {
        return;
    }
    let (ns, mut ipvs) = open();
    let web = vs(Protocol::Tcp, "10.96.0.1", 80, Scheduler::Rr, None);
    let (a, b) = (rs("10.1.0.1", 8080, 1), rs("10.1.0.2", 8080, 1));
    let applied = ipvs.apply(&[Op::AddService(web), Op::AddDest(web.key, a), Op::AddDest(web.key, b)]).unwrap();
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);

    let edited = VirtualServer { scheduler: Scheduler::Sh, persistence: Some(600), ..web };
    let dns = vs(Protocol::Udp, "fd00::10", 53, Scheduler::Rr, None);
    let ops = [
        Op::EditService(edited),
        Op::AddService(web),
        Op::EditDest(web.key, RealServer { weight: 0, ..a }),
        Op::AddDest(web.key, b),
        Op::DelDest(web.key, b.key),
        Op::AddService(dns),
        Op::AddDest(dns.key, rs("fd00::1:1", 53, 1)),
    ];
    let applied = ipvs.apply(&ops).unwrap();
    assert_eq!(applied.messages, ops.len());
    let failed: Vec<(Op, Option<i32>)> = applied.failed.iter().map(|(op, e)| (*op, e.raw_os_error())).collect();
    assert_eq!(failed, [(Op::AddService(web), Some(EEXIST)), (Op::AddDest(web.key, b), Some(EEXIST))]);
    assert_eq!(ipvs.services().unwrap(), [edited, dns]);
    assert_eq!(servers(&mut ipvs, &web.key), [RealServer { weight: 0, ..a }]);
    assert_eq!(servers(&mut ipvs, &dns.key), [rs("fd00::1:1", 53, 1)]);
    let listing = ns.exec(&["ipvsadm", "-Ln"]).unwrap();
    assert_eq!(ipvsadm_line(&listing, "TCP  10.96.0.1:80"), ["TCP", "10.96.0.1:80", "sh", "persistent", "600"]);

    // Back to no persistence; then deletions, with refusals for what is
    // not there (ESRCH: no such service, ENOENT: no such real server).
    let ops = [
        Op::EditService(web),
        Op::EditDest(web.key, rs("10.1.0.9", 1, 1)),
        Op::DelService(dns.key),
        Op::DelService(dns.key),
        Op::DelDest(web.key, a.key),
    ];
    let applied = ipvs.apply(&ops).unwrap();
    let failed: Vec<(Op, Option<i32>)> = applied.failed.iter().map(|(op, e)| (*op, e.raw_os_error())).collect();
    assert_eq!(failed, [(ops[1], Some(ENOENT)), (ops[3], Some(ESRCH))]);
    assert_eq!(ipvs.services().unwrap(), [web]);
    assert!(servers(&mut ipvs, &web.key).is_empty());
    let listing = ns.exec(&["ipvsadm", "-Ln"]).unwrap();
    assert_eq!(ipvsadm_line(&listing, "TCP  10.96.0.1:80"), ["TCP", "10.96.0.1:80", "rr"]);
}

#[test]
fn timeouts_round_trip() {
    if !ipvs_tests_enabled("timeouts_round_trip") {
        return;
    }
    let (ns, mut ipvs) = open();
    assert_eq!(ipvs.timeouts().unwrap(), Timeouts { tcp: 900, tcp_fin: 120, udp: 300 }, "the kernel's defaults");
    ipvs.set_timeouts(Timeouts { tcp: 7200, tcp_fin: 15, udp: 30 }).unwrap();
    assert_eq!(ipvs.timeouts().unwrap(), Timeouts { tcp: 7200, tcp_fin: 15, udp: 30 });
    // 0 leaves a timeout as it is.
    ipvs.set_timeouts(Timeouts { tcp: 0, tcp_fin: 0, udp: 45 }).unwrap();
    assert_eq!(ipvs.timeouts().unwrap(), Timeouts { tcp: 7200, tcp_fin: 15, udp: 45 });
    let listing = ns.exec(&["ipvsadm", "-L", "--timeout"]).unwrap();
    assert!(listing.contains("7200 15 45"), "{listing}");
}

#[test]
fn thousands_of_services_go_in_one_apply_and_list_back() {
    if !ipvs_tests_enabled("thousands_of_services_go_in_one_apply_and_list_back") {
        return;
    }
    let (_ns, mut ipvs) = open();
    let ip = |base: u32, i: u32| IpAddr::V4(Ipv4Addr::from(base + i));
    let mut want = Vec::new();
    let mut ops = Vec::new();
    for i in 0..2000u32 {
        let protocol = if i % 2 == 0 { Protocol::Tcp } else { Protocol::Udp };
        let v = VirtualServer { key: VsKey { protocol, addr: ip(0x0a60_0000, i), port: 80 }, scheduler: Scheduler::Rr, persistence: None };
        want.push(v);
        ops.push(Op::AddService(v));
        for j in 0..3u32 {
            ops.push(Op::AddDest(v.key, RealServer { key: RsKey { addr: ip(0x0a01_0000, i * 3 + j), port: 8080 }, weight: 1 }));
        }
    }
    let applied = ipvs.apply(&ops).unwrap();
    assert_eq!(applied.messages, 8000);
    assert!(applied.failed.is_empty(), "{} refused, first {:?}", applied.failed.len(), applied.failed.first());
    want.sort();
    assert_eq!(ipvs.services().unwrap(), want);
    for v in [want[0], want[999], want[1999]] {
        assert_eq!(ipvs.destinations(&v.key).unwrap().len(), 3, "{}", v.key);
    }
    ipvs.flush().unwrap();
    assert!(ipvs.services().unwrap().is_empty());
}

/// The one test for machines without IPVS (here, not in the VM).
#[test]
fn without_ipvs_opening_says_so() {
    if std::path::Path::new("/proc/net/ip_vs").exists() || !kernel_tests_enabled("without_ipvs_opening_says_so") {
        return;
    }
    let ns = Netns::new("noipvs").unwrap();
    let err = IpvsSocket::open_in_netns(ns.name()).unwrap_err().to_string();
    assert_eq!(err, "the kernel has no IPVS (modprobe ip_vs)");
    let err = IpvsSocket::open_in_netns("kpt-no-such-namespace").unwrap_err().to_string();
    assert!(err.starts_with("/run/netns/kpt-no-such-namespace: "), "{err}");
}
