//! The iptables proxier against the fake iptables: the first sync is a
//! full restore, later ones are partial and touch only what changed; a
//! periodic sync repairs chains someone else deleted or flushed; a failed
//! restore is followed by a full one; cleanup removes everything.

use async_trait::async_trait;
use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::{Kernel, KernelError, Listing};
use kproxy_backend_iptables::render::Table;
use kproxy_backend_iptables::trace::trace;
use kproxy_backend_iptables::{names, IptablesOptions, IptablesProxier};
use kproxy_core::oracle::{scenarios, Dataplane, Scenario};
use kproxy_core::{IpFamily, Proxier, SyncRequest};

const V4: IpFamily = IpFamily::V4;

/// The fake, refusing the next `fail` restores and recording the inputs.
#[derive(Debug, Default)]
struct Recording {
    inner: FakeIptables,
    fail: usize,
    restores: Vec<String>,
}

#[async_trait]
impl Kernel for Recording {
    async fn restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError> {
        self.restores.push(text.to_string());
        if self.fail > 0 {
            self.fail -= 1;
            return Err(KernelError::Fake("injected failure".into()));
        }
        self.inner.restore(family, text).map_err(KernelError::Fake)
    }
    async fn list(&mut self, family: IpFamily, table: Table, chains: &[&str]) -> Result<Listing, KernelError> {
        self.inner.list(family, table, chains).await
    }
    async fn chain_names(&mut self, family: IpFamily, table: Table) -> Result<Vec<String>, KernelError> {
        self.inner.chain_names(family, table).await
    }
}

fn scenario(name: &str) -> Scenario {
    scenarios::all().into_iter().find(|s| s.name == name).unwrap()
}

fn proxier(s: &Scenario) -> IptablesProxier<Recording> {
    let mut p = IptablesProxier::new(kproxy_core::oracle::fixtures::NODE_NAME, s.config.clone(), Recording::default(), IptablesOptions::default()).unwrap();
    s.feed(&mut p);
    p
}

fn assert_cases(p: &IptablesProxier<Recording>, s: &Scenario) {
    for case in &s.cases {
        let got = trace(&p.kernel().inner, s.family, &s.config, &case.packet).unwrap();
        assert_eq!(&got, case.expected_for(Dataplane::Iptables), "{} / {}", s.name, case.name);
    }
}

#[tokio::test]
async fn first_sync_is_full_then_partial_syncs_touch_only_the_change() {
    let s = scenario("cluster_ip");
    let mut p = proxier(&s);
    let report = p.sync(SyncRequest::default()).await.unwrap();
    assert!(report.full);
    assert_cases(&p, &s);
    let first = p.kernel().restores[0].clone();
    assert!(first.contains(":KUBE-SERVICES - [0:0]") && first.contains("-I PREROUTING 1"), "{first}");

    // One endpoint goes: the restore names that service's chains and rules only.
    let mut slice = s.slices[0].clone();
    slice.endpoints.retain(|e| e.addresses[0] == "10.180.0.1");
    p.on_endpoint_slice_update(&slice, false);
    let report = p.sync(SyncRequest::default()).await.unwrap();
    assert!(!report.full);
    let partial = p.kernel().restores.last().unwrap().clone();
    assert!(!partial.contains(":KUBE-SERVICES "), "shared chains are not rewritten:\n{partial}");
    assert!(partial.contains("-X KUBE-SEP-"), "the removed endpoint's chain is deleted:\n{partial}");
    let svc = &p.kernel().inner.table(V4, Table::Nat).chains[&names::service_chain(&kproxy_core::ServicePortName::new("ns1", "svc1", "p80", kproxy_core::Protocol::Tcp))];
    assert_eq!(svc.iter().filter(|r| r.args().contains("KUBE-SEP-")).count(), 1, "one endpoint left");

    // Nothing changed: a partial sync writes nothing.
    p.sync(SyncRequest::default()).await.unwrap();
    assert_eq!(p.kernel().restores.last().unwrap(), "");
}

#[tokio::test]
async fn a_periodic_sync_repairs_a_deleted_service_chain_and_a_missing_jump() {
    let s = scenario("node_port");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    // Someone deletes a KUBE-SVC chain (and the rule that jumped to it),
    // and the jump from PREROUTING.
    let nat = p.kernel_mut().inner.table_mut(V4, Table::Nat);
    let victim = nat.chains.keys().find(|c| c.starts_with("KUBE-SVC-")).unwrap().clone();
    nat.chains.values_mut().for_each(|rules| rules.retain(|r| !r.args().ends_with(&format!("-j {victim}"))));
    nat.chains.remove(&victim);
    nat.chains.get_mut("PREROUTING").unwrap().clear();
    let quiet = p.sync(SyncRequest::default()).await.unwrap();
    assert!(!quiet.full, "a partial sync trusts its bookkeeping");
    let report = p.sync(SyncRequest { full: true }).await.unwrap();
    assert!(report.full);
    assert!(p.kernel().inner.table(V4, Table::Nat).chains.contains_key(&victim), "the chain is back");
    assert_cases(&p, &s);
    // A periodic sync that finds nothing wrong writes nothing.
    p.sync(SyncRequest { full: true }).await.unwrap();
    assert_eq!(p.kernel().restores.last().unwrap(), "");
}

#[tokio::test]
async fn a_failed_restore_is_followed_by_a_full_one_and_stale_chains_go() {
    let s = scenario("session_affinity");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    for svc in &s.services {
        p.on_service_update(Some(svc), None);
    }
    p.kernel_mut().fail = 1;
    assert!(p.sync(SyncRequest::default()).await.is_err());
    let report = p.sync(SyncRequest::default()).await.unwrap();
    assert!(report.full, "after a failure everything is rewritten");
    assert!(report.changes.updated_services().len() == 1, "the failed sync's changes are reported by the next one");
    let nat = &p.kernel().inner.table(V4, Table::Nat).chains;
    assert!(!nat.keys().any(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-")), "stale chains deleted: {:?}", nat.keys());
}

#[tokio::test]
async fn cleanup_leaves_only_what_others_own() {
    let s = scenario("load_balancer_source_ranges");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    p.kernel_mut().inner.restore(V4, "*filter\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n").unwrap();
    p.cleanup().await.unwrap();
    let filter = &p.kernel().inner.table(V4, Table::Filter).chains;
    assert_eq!(filter.keys().cloned().collect::<Vec<_>>(), ["FORWARD", "INPUT", "KUBE-FIREWALL", "OUTPUT"]);
    assert_eq!(filter["INPUT"].len(), 1, "kubelet's jump stays");
    let nat = &p.kernel().inner.table(V4, Table::Nat).chains;
    assert!(nat.keys().all(|c| !c.starts_with("KUBE-")) && nat.values().all(Vec::is_empty), "{nat:?}");
}
