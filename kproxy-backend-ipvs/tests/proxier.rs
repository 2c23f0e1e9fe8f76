//! The IPVS proxier against the fake kernel: what the first sync sets up,
//! that later syncs touch only what changed, graceful termination through
//! syncs, drift repair on a full sync, foreign virtual servers left alone,
//! a refused batch followed by a full sync, and cleanup.

use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::model::{Op, RealServer, RsKey, VirtualServer, VsKey};
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState::Ready};
use kproxy_core::{IpFamily, Protocol, Proxier, SyncRequest};

const PARTIAL: SyncRequest = SyncRequest { full: false };
const FULL: SyncRequest = SyncRequest { full: true };

fn key(addr: &str, port: u16) -> VsKey {
    VsKey { protocol: Protocol::Tcp, addr: addr.parse().unwrap(), port }
}

fn rs(addr: &str, port: u16) -> RsKey {
    RsKey { addr: addr.parse().unwrap(), port }
}

fn proxier(options: IpvsOptions) -> IpvsProxier<FakeHost> {
    let mut p = IpvsDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), FakeHost::new(), options).unwrap();
    p.on_node_update(&fx::node());
    p
}

/// Service `name` with ClusterIP `ip`, NodePort `node_port`, endpoints `eps`.
fn add(p: &mut IpvsProxier<FakeHost>, name: &str, ip: &str, node_port: i32, eps: &[&str]) {
    p.on_service_update(None, Some(&service("ns", name, &[ip]).type_("NodePort").port("p", 80, "TCP", node_port).build()));
    set_endpoints(p, name, eps);
}

fn set_endpoints(p: &mut IpvsProxier<FakeHost>, name: &str, eps: &[&str]) {
    let mut s = slice("ns", name, &format!("{name}-a"), "IPv4").port("p", 8080, "TCP");
    for ep in eps {
        s = s.endpoint(ep, fx::OTHER_NODE, Ready);
    }
    p.on_endpoint_slice_update(&s.build(), false);
}

fn dests(p: &IpvsProxier<FakeHost>, k: VsKey) -> Vec<(RsKey, u32)> {
    p.kernel().ipvs.current()[&k].dests.iter().map(|d| (d.server.key, d.server.weight)).collect()
}

#[tokio::test]
async fn the_first_sync_sets_everything_up() {
    let mut p = proxier(IpvsOptions { strict_arp: true, ..IpvsOptions::default() });
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1", "10.180.1.2"]);
    p.sync(PARTIAL).await.unwrap();
    let host = p.kernel();
    assert_eq!(host.addresses().iter().map(ToString::to_string).collect::<Vec<_>>(), ["172.30.0.1"], "the node IP is never bound");
    assert_eq!(dests(&p, key("172.30.0.1", 80)), [(rs("10.180.1.1", 8080), 1), (rs("10.180.1.2", 8080), 1)]);
    assert_eq!(dests(&p, key(fx::NODE_IP, 30001)).len(), 2, "a NodePort virtual server per node address");
    for (k, v) in [("net/ipv4/vs/conntrack", "1"), ("net/ipv4/vs/expire_nodest_conn", "1"), ("net/ipv4/conf/all/arp_ignore", "1"), ("net/ipv4/conf/all/arp_announce", "2")] {
        assert_eq!(host.sysctls.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(host.ipsets.sets["KUBE-CLUSTER-IP"].entries.iter().any(|e| e.text() == "172.30.0.1,tcp:80"));
    assert!(host.iptables.save(IpFamily::V4, kproxy_backend_iptables::Table::Nat).contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
}

#[tokio::test]
async fn later_syncs_touch_only_what_changed() {
    let mut p = proxier(IpvsOptions::default());
    for i in 1..=20 {
        add(&mut p, &format!("s{i}"), &format!("172.30.0.{i}"), 30000 + i, &["10.180.1.1", "10.180.1.2"]);
    }
    p.sync(PARTIAL).await.unwrap();
    assert_eq!(p.stats().ipvs_messages, 20 * 2 * 3, "a service and two real servers per virtual server");

    p.sync(PARTIAL).await.unwrap();
    assert_eq!((p.stats().ipvs_messages, p.stats().sets_written, p.stats().dumped_services), (0, 0, 0), "nothing changed");

    set_endpoints(&mut p, "s7", &["10.180.1.1", "10.180.1.3"]);
    let calls = p.kernel().calls.clone();
    p.sync(PARTIAL).await.unwrap();
    let s = p.stats();
    // One real server swapped on the ClusterIP and the NodePort servers.
    assert_eq!((s.ipvs_messages, s.dumped_services, s.rules_written), (4, 2, false));
    assert_eq!(s.sets_written, 0, "the endpoints are on another node: no set changed");
    assert_eq!(p.kernel().calls["ipvs"] - calls["ipvs"], 2, "one dump, one batch");
    assert_eq!(dests(&p, key("172.30.0.7", 80)), [(rs("10.180.1.1", 8080), 1), (rs("10.180.1.3", 8080), 1)]);

    p.on_service_update(Some(&service("ns", "s3", &["172.30.0.3"]).type_("NodePort").port("p", 80, "TCP", 30003).build()), None);
    p.sync(PARTIAL).await.unwrap();
    assert!(!p.kernel().ipvs.current().contains_key(&key("172.30.0.3", 80)));
    assert!(!p.kernel().addresses().contains(&"172.30.0.3".parse().unwrap()), "its address is unbound");
    assert_eq!(p.stats().ipvs_messages, 2, "two virtual servers deleted, real servers with them");
}

#[tokio::test]
async fn a_removed_real_server_with_connections_drains_then_goes() {
    let mut p = proxier(IpvsOptions::default());
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1", "10.180.1.2"]);
    p.sync(PARTIAL).await.unwrap();
    let k = key("172.30.0.1", 80);
    assert!(p.kernel_mut().ipvs.set_connections(&k, &rs("10.180.1.2", 8080), 3, 1));
    set_endpoints(&mut p, "a", &["10.180.1.1"]);
    p.sync(PARTIAL).await.unwrap();
    assert_eq!(dests(&p, k), [(rs("10.180.1.1", 8080), 1), (rs("10.180.1.2", 8080), 0)], "weight 0 while connected");
    assert_eq!(p.stats().draining, 1);
    p.sync(PARTIAL).await.unwrap();
    assert_eq!(dests(&p, k).len(), 2, "still draining");
    p.kernel_mut().ipvs.set_connections(&k, &rs("10.180.1.2", 8080), 0, 0);
    p.sync(PARTIAL).await.unwrap();
    assert_eq!(dests(&p, k), [(rs("10.180.1.1", 8080), 1)], "deleted once drained, with no Service change");
}

#[tokio::test]
async fn a_full_sync_repairs_drift_and_leaves_foreign_servers_alone() {
    let mut p = proxier(IpvsOptions { exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap()], ..IpvsOptions::default() });
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1"]);
    p.sync(PARTIAL).await.unwrap();
    let k = key("172.30.0.1", 80);
    let foreign = VirtualServer { key: key("10.96.0.10", 53), scheduler: Default::default(), persistence: None };
    let stray = VirtualServer { key: key("172.31.9.9", 80), scheduler: Default::default(), persistence: None };
    let host = p.kernel_mut();
    let refused = host.ipvs.apply(&[
        Op::DelDest(k, rs("10.180.1.1", 8080)),
        Op::AddService(foreign),
        Op::AddService(stray),
        Op::AddDest(k, RealServer { key: rs("10.9.9.9", 1), weight: 1 }),
    ]);
    assert!(refused.is_empty());
    p.sync(PARTIAL).await.unwrap();
    assert_eq!(dests(&p, k), [(rs("10.9.9.9", 1), 1)], "a partial sync does not look at unchanged services");
    p.sync(FULL).await.unwrap();
    let table = p.kernel().ipvs.current();
    assert_eq!(dests(&p, k), [(rs("10.180.1.1", 8080), 1)], "repaired");
    assert!(table.contains_key(&foreign.key), "inside excludeCIDRs: someone else's");
    assert!(!table.contains_key(&stray.key), "an unknown virtual server of the family is deleted, as upstream");
}

#[tokio::test]
async fn a_refused_batch_fails_the_sync_and_the_next_one_is_full() {
    let mut p = proxier(IpvsOptions::default());
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1"]);
    p.kernel_mut().refuse_next_batch = true;
    let err = p.sync(PARTIAL).await.unwrap_err().to_string();
    assert!(err.contains("IPVS refused 4 of 4 operations"), "{err}");
    let report = p.sync(PARTIAL).await.unwrap();
    assert!(report.full, "after a failure everything is looked at");
    assert!(report.changes.updated_services().len() == 1, "the failed sync's changes are reported by the next");
    assert_eq!(dests(&p, key("172.30.0.1", 80)).len(), 1);
}

#[tokio::test]
async fn cleanup_removes_everything_it_installed() {
    let mut p = proxier(IpvsOptions::default());
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1"]);
    p.sync(PARTIAL).await.unwrap();
    p.cleanup().await.unwrap();
    let host = p.kernel();
    assert!(host.ipvs.current().is_empty());
    assert!(host.device.is_none());
    assert!(host.ipsets.sets.is_empty(), "{:?}", host.ipsets.sets.keys().collect::<Vec<_>>());
    for table in kproxy_backend_iptables::Table::ALL {
        let saved = host.iptables.save(IpFamily::V4, table);
        assert!(!saved.contains("KUBE-"), "{saved}");
    }
}

/// Handing the node to iptables mode in the same flavour: iptables mode's
/// first sync rewrote the chains both modes name alike; the cleanup that
/// keeps those removes the virtual servers, the device, the ipsets and IPVS
/// mode's own chains with their jumps, and nothing of iptables mode's.
#[tokio::test]
async fn a_cleanup_keeping_iptables_mode_s_chains_removes_the_rest() {
    use kproxy_backend_iptables::{restore::is_ours, Table};
    let mut p = proxier(IpvsOptions::default());
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1"]);
    p.sync(PARTIAL).await.unwrap();
    // What iptables mode's first sync leaves in the chains both modes
    // write: no reference to IPVS mode's chains or sets.
    for table in Table::ALL {
        let saved = p.kernel().iptables.save(IpFamily::V4, table);
        let shared: String = saved.lines().filter(|l| l.starts_with(":KUBE-") && is_ours(&l[1..l.find(' ').unwrap()])).map(|l| format!("{l}\n")).collect();
        assert!(!shared.is_empty(), "{saved}");
        let name = if table == Table::Nat { "nat" } else { "filter" };
        p.kernel_mut().iptables.restore(IpFamily::V4, &format!("*{name}\n{shared}COMMIT\n")).unwrap();
    }
    p.dataplane_mut().cleanup_keeping(&is_ours).await.unwrap();
    let host = p.kernel();
    assert!(host.ipvs.current().is_empty());
    assert!(host.device.is_none());
    assert!(host.ipsets.sets.is_empty(), "{:?}", host.ipsets.sets.keys().collect::<Vec<_>>());
    for table in Table::ALL {
        let saved = host.iptables.save(IpFamily::V4, table);
        let chains: Vec<&str> = saved.lines().filter_map(|l| l.strip_prefix(":KUBE-")).map(|l| &l[..l.find(' ').unwrap()]).collect();
        assert!(!chains.is_empty() && chains.iter().all(|c| is_ours(&format!("KUBE-{c}"))), "{table:?} keeps only iptables mode's chains:\n{saved}");
        for line in saved.lines().filter(|l| l.starts_with("-A ") && l.contains("-j KUBE-")) {
            let target = &line[line.rfind("-j ").unwrap() + 3..];
            assert!(is_ours(target.split_whitespace().next().unwrap()), "a jump to a removed chain stayed: {line}");
        }
    }
}

/// Taking a node over from iptables mode: the first sync's rules replace
/// iptables mode's DNAT in `KUBE-SERVICES`, so the virtual servers are in
/// place before them (a bound address with no virtual server refuses new
/// connections). Later syncs write the rules first.
#[tokio::test]
async fn the_first_sync_writes_virtual_servers_before_the_rules() {
    let mut p = proxier(IpvsOptions::default());
    add(&mut p, "a", "172.30.0.1", 30001, &["10.180.1.1"]);
    p.sync(PARTIAL).await.unwrap();
    let seen = p.kernel().virtual_servers_at_restore.clone();
    assert!(!seen.is_empty() && seen.iter().all(|&n| n > 0), "virtual servers at each restore of the first sync: {seen:?}");
    p.kernel_mut().virtual_servers_at_restore.clear();
    add(&mut p, "b", "172.30.0.2", 30002, &["10.180.1.2"]);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let seen = p.kernel().virtual_servers_at_restore.clone();
    assert!(seen.first().is_some_and(|&n| n < p.kernel().ipvs.current().len()), "a later full sync writes the rules first: {seen:?}");
}
