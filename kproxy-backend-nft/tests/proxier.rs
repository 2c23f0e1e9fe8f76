//! The nftables proxier against the fake kernel: chunked builds, small
//! incremental transactions, drift repair, restarts without a gap, retries.

use async_trait::async_trait;
use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::{Kernel, KernelError, Outline};
use std::net::IpAddr;

use kproxy_backend_nft::model::Key;
use kproxy_backend_nft::transaction::{Op, Transaction};
use kproxy_backend_nft::{names, render, NftOptions, NftProxier, NftDataplane};
use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};
use kproxy_oracle::scenarios;
use kproxy_core::{IpFamily, Proxier, SyncRequest};

const V4: IpFamily = IpFamily::V4;

fn options(chunk: usize) -> NftOptions {
    NftOptions { chunk_elements: chunk, ..NftOptions::default() }
}

/// A fake kernel that refuses the next `fail` transactions.
#[derive(Default)]
struct Flaky {
    inner: FakeKernel,
    fail: usize,
}

#[async_trait]
impl Kernel for Flaky {
    async fn apply(&mut self, tx: &Transaction) -> Result<(), KernelError> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(KernelError::Refused("injected failure".into()));
        }
        self.inner.apply(tx).await
    }
    async fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        self.inner.tables(family).await
    }
    async fn outline(&mut self, family: IpFamily, table: &str) -> Result<Option<Outline>, KernelError> {
        self.inner.outline(family, table).await
    }
    async fn affinity_entries(&mut self, family: IpFamily, table: &str) -> Result<Vec<(Key, IpAddr, u16)>, KernelError> {
        self.inner.affinity_entries(family, table).await
    }
}

/// A proxier loaded with every object of the shared `node_port` and
/// `session_affinity` scenarios.
fn loaded<K: Kernel + 'static>(kernel: K, chunk: usize) -> NftProxier<K> {
    let mut p = NftDataplane::proxier(fx::NODE_NAME, fx::config(V4), kernel, options(chunk)).unwrap();
    p.on_node_update(&fx::node());
    for s in scenarios::all().into_iter().filter(|s| s.name == "node_port" || s.name == "session_affinity") {
        for svc in &s.services {
            p.on_service_update(None, Some(svc));
        }
        for sl in &s.slices {
            p.on_endpoint_slice_update(sl, false);
        }
    }
    p
}

fn full() -> SyncRequest {
    SyncRequest { full: true }
}

#[tokio::test]
async fn the_first_sync_builds_in_chunks_and_attaches_hooks_last() {
    let mut p = loaded(FakeKernel::new(), 5);
    p.sync(SyncRequest::default()).await.unwrap();
    let k = p.kernel();
    assert!(k.applied.len() > 3, "built in several transactions: {}", k.applied.len());
    for tx in &k.applied[..k.applied.len() - 1] {
        assert!(tx.element_count() <= 5, "a chunk exceeded the bound");
        assert!(
            !tx.commands.iter().any(|c| matches!(&c.op, Op::AddChain { base: Some(_), .. })),
            "hooks attached before the table was complete"
        );
    }
    let swap = k.applied.last().unwrap();
    assert!(swap.commands.iter().any(|c| matches!(&c.op, Op::AddChain { base: Some(_), .. })));
    assert_eq!(p.table(), Some("kproxy-a"));
    assert_eq!(k.table(V4, "kproxy-a").unwrap(), p.ruleset());
}

#[tokio::test]
async fn a_one_endpoint_change_is_one_small_transaction() {
    let mut p = loaded(FakeKernel::new(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    let before = p.kernel().applied.len();
    let s = slice("ns1", "svc2", "svc2-a", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint("10.180.0.2", fx::NODE_NAME, EndpointState::Ready)
        .endpoint("10.180.1.2", fx::OTHER_NODE, EndpointState::Ready)
        .endpoint("10.180.1.3", fx::OTHER_NODE, EndpointState::Ready)
        .build();
    assert!(p.on_endpoint_slice_update(&s, false));
    p.sync(SyncRequest::default()).await.unwrap();
    let k = p.kernel();
    assert_eq!(k.applied.len(), before + 1, "one transaction");
    let tx = k.applied.last().unwrap();
    assert!(tx.element_count() <= 14, "{} elements for one endpoint:\n{}", tx.element_count(), tx.to_nft());
    assert_eq!(k.table(V4, "kproxy-a").unwrap(), p.ruleset());
    assert_eq!(p.ruleset().pruned(), render(p.state(), &fx::config(V4)).ruleset.pruned());
}

#[tokio::test]
async fn nothing_changed_sends_nothing() {
    let mut p = loaded(FakeKernel::new(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    let before = p.kernel().applied.len();
    p.sync(SyncRequest::default()).await.unwrap();
    p.sync(full()).await.unwrap();
    let sent: usize = p.kernel().applied[before..].iter().map(|t| t.commands.len()).sum();
    assert_eq!(sent, 0);
}

#[tokio::test]
async fn a_full_sync_repairs_a_flushed_chain() {
    let mut p = loaded(FakeKernel::new(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    p.kernel_mut().flush_chain_externally(V4, "kproxy-a", names::SERVICES);
    p.sync(SyncRequest::default()).await.unwrap();
    assert!(p.kernel().table(V4, "kproxy-a").unwrap().chains[names::SERVICES].rules.is_empty(), "partial syncs trust the kernel");
    p.sync(full()).await.unwrap();
    assert_eq!(p.table(), Some("kproxy-b"), "rebuilt under the other name");
    assert!(p.kernel().table(V4, "kproxy-a").is_none(), "the damaged table is gone");
    assert_eq!(p.kernel().table(V4, "kproxy-b").unwrap(), p.ruleset());
}

#[tokio::test]
async fn a_full_sync_repairs_a_deleted_table() {
    let mut p = loaded(FakeKernel::new(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    p.kernel_mut().delete_table_externally(V4, "kproxy-a");
    p.sync(full()).await.unwrap();
    assert_eq!(p.kernel().table(V4, p.table().unwrap()).unwrap(), p.ruleset());
}

#[tokio::test]
async fn a_restarted_proxier_builds_beside_the_old_table_and_swaps() {
    let mut first = loaded(FakeKernel::new(), 7);
    first.sync(SyncRequest::default()).await.unwrap();
    let kernel = first.kernel().clone();
    let old_rules = kernel.table(V4, "kproxy-a").unwrap().clone();

    let mut second = loaded(kernel, 7);
    let before = second.kernel().applied.len();
    second.sync(SyncRequest::default()).await.unwrap();
    let k = second.kernel();
    let txs = &k.applied[before..];
    for tx in &txs[..txs.len() - 1] {
        assert!(
            tx.commands.iter().all(|c| c.table == "kproxy-b"),
            "the serving table was touched before the swap"
        );
    }
    let swap = txs.last().unwrap();
    assert!(swap.commands.iter().any(|c| c.table == "kproxy-a" && c.op == Op::DeleteTable));
    assert_eq!(k.table(V4, "kproxy-b").unwrap(), &old_rules, "same ruleset, new name");
    assert!(k.table(V4, "kproxy-a").is_none());
}

#[tokio::test]
async fn a_failed_sync_is_retried_in_full_and_keeps_its_changes() {
    let mut p = loaded(Flaky::default(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    p.kernel_mut().fail = 1;
    let dns = service("ns2", "dns", &["172.30.9.9"]).port("dns", 53, "UDP", 0).build();
    p.on_service_update(None, Some(&dns));
    assert!(p.sync(SyncRequest::default()).await.is_err());
    let report = p.sync(full()).await.unwrap();
    assert!(report.full);
    assert!(report.changes.updated_services().iter().any(|s| s.name == "dns"), "changes of the failed sync are reported");
    assert_eq!(p.kernel().inner.table(V4, p.table().unwrap()).unwrap(), p.ruleset());
}

#[tokio::test]
async fn cleanup_removes_every_kproxy_table() {
    let mut p = loaded(FakeKernel::new(), 1000);
    p.sync(SyncRequest::default()).await.unwrap();
    p.cleanup().await.unwrap();
    assert!(p.kernel().dump().is_empty());
}

#[tokio::test]
async fn two_services_claiming_one_nodeport_do_not_break_the_table() {
    let mut p = NftDataplane::proxier(fx::NODE_NAME, fx::config(V4), FakeKernel::new(), options(1000)).unwrap();
    let a = service("ns", "a", &["172.30.1.1"]).type_("NodePort").port("p", 80, "TCP", 30500).build();
    let b = service("ns", "b", &["172.30.1.2"]).type_("NodePort").port("p", 80, "TCP", 30500).build();
    for (name, svc) in [("a", &a), ("b", &b)] {
        p.on_service_update(None, Some(svc));
        let s = slice("ns", name, &format!("{name}-1"), "IPv4").port("p", 80, "TCP").endpoint(&format!("10.180.1.{}", name.len()), fx::OTHER_NODE, EndpointState::Ready);
        p.on_endpoint_slice_update(&s.build(), false);
    }
    p.sync(SyncRequest::default()).await.unwrap();
    p.on_service_update(Some(&a), None);
    p.sync(SyncRequest::default()).await.unwrap();
    assert_eq!(p.kernel().table(V4, "kproxy-a").unwrap(), p.ruleset(), "the fake accepted every step");
}

#[test]
fn hostile_interface_names_are_refused() {
    for bad in ["", "has space", "quote\"d", "sixteen-chars-xx", "semi;colon"] {
        let mut config = fx::config(V4);
        config.local_detector = kproxy_core::LocalDetector::BridgeInterface(bad.into());
        assert!(NftDataplane::proxier("n", config, FakeKernel::new(), NftOptions::default()).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn affinity_to_a_removed_endpoint_is_forgotten() {
    let scenario = scenarios::all().into_iter().find(|s| s.name == "session_affinity").unwrap();
    let mut p = NftDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), FakeKernel::new(), options(1000)).unwrap();
    scenario.feed(&mut p);
    p.sync(SyncRequest::default()).await.unwrap();
    let vip: IpAddr = "172.30.0.50".parse().unwrap();
    let (a, b): (IpAddr, IpAddr) = ("10.180.0.10".parse().unwrap(), "10.180.1.10".parse().unwrap());
    let to_a = Key::Affinity("10.180.0.100".parse().unwrap(), vip, kproxy_core::Protocol::Tcp, 80);
    let to_b = Key::Affinity("10.180.0.101".parse().unwrap(), vip, kproxy_core::Protocol::Tcp, 80);
    p.kernel_mut().record_affinity(V4, "kproxy-a", to_a, (a, 80));
    p.kernel_mut().record_affinity(V4, "kproxy-a", to_b, (b, 80));

    let only_b = slice("ns1", "svc10", "svc10-a", "IPv4").port("p80", 80, "TCP").endpoint("10.180.1.10", fx::OTHER_NODE, EndpointState::Ready).build();
    p.on_endpoint_slice_update(&only_b, false);
    p.sync(SyncRequest::default()).await.unwrap();
    let left: Vec<Key> = p.kernel().table(V4, "kproxy-a").unwrap().sets[names::AFFINITY].elements.keys().copied().collect();
    assert_eq!(left, vec![to_b], "the entry for the removed endpoint is gone, the other kept");
}

/// What a pod's TCP packet to `dst`:80 meets in the rules the fake kernel
/// holds now.
fn fate(p: &NftProxier<FakeKernel>, dst: &str) -> kproxy_oracle::Verdict {
    use kproxy_oracle::{Origin, Packet};
    let table = p.kernel().table(V4, p.table().expect("a table")).expect("committed");
    let packet = Packet::tcp(Origin::LocalPod, fx::LOCAL_CLIENT_POD.parse().unwrap(), dst.parse().unwrap(), 80);
    kproxy_backend_nft::trace::trace(table, &fx::config(V4), &packet).expect("traced")
}

#[tokio::test]
async fn service_cidrs_follow_their_objects_and_the_services_in_them() {
    use kproxy_oracle::Verdict;
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let mut p = NftDataplane::proxier(fx::NODE_NAME, fx::config(V4), FakeKernel::new(), options(100)).unwrap();
    p.on_node_update(&fx::node());
    assert!(p.on_service_cidrs_update(&[net("172.30.0.0/16"), net("fd00:172:30::/112")]), "a change is pending");
    p.sync(full()).await.unwrap();
    assert_eq!(fate(&p, "172.30.0.99"), Verdict::Drop, "unallocated: dropped");
    assert_eq!(fate(&p, "172.31.0.99"), Verdict::NotService, "outside the range: left alone");

    // A Service takes the address: it is served, not dropped.
    let svc = service("ns", "late", &["172.30.0.99"]).port("p", 80, "TCP", 0).build();
    let eps = slice("ns", "late", "late-1", "IPv4").port("p", 80, "TCP").endpoint("10.180.0.9", fx::NODE_NAME, EndpointState::Ready).build();
    p.on_service_update(None, Some(&svc));
    p.on_endpoint_slice_update(&eps, false);
    p.sync(SyncRequest::default()).await.unwrap();
    assert!(matches!(fate(&p, "172.30.0.99"), Verdict::Forward { .. }));

    // It goes again: dropped again.
    p.on_endpoint_slice_update(&eps, true);
    p.on_service_update(Some(&svc), None);
    p.sync(SyncRequest::default()).await.unwrap();
    assert_eq!(fate(&p, "172.30.0.99"), Verdict::Drop);

    // The same ranges again change nothing; only another family's left: no drop.
    assert!(!p.on_service_cidrs_update(&[net("fd00:172:30::/112"), net("172.30.0.0/16")]), "same ranges, nothing pending");
    assert!(p.on_service_cidrs_update(&[net("fd00:172:30::/112")]));
    p.sync(SyncRequest::default()).await.unwrap();
    assert_eq!(fate(&p, "172.30.0.99"), Verdict::NotService, "the IPv4 range was deleted");
    assert!(p.on_service_cidrs_update(&[net("172.30.0.0/24")]));
    p.sync(SyncRequest::default()).await.unwrap();
    assert_eq!(fate(&p, "172.30.0.99"), Verdict::Drop, "a new range applies at the next sync");
}
