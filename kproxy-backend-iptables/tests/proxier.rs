//! The iptables proxier against the fake iptables: the first sync is a
//! full restore, later ones are partial and touch only what changed; a
//! periodic sync repairs chains someone else deleted, flushed or edited
//! (a partial one those it edits in place); a failed
//! restore is followed by a full one; cleanup removes everything.

use async_trait::async_trait;
use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::{Digests, Kernel, KernelError, Listing};
use kproxy_backend_iptables::render::Table;
use kproxy_backend_iptables::trace::trace;
use kproxy_backend_iptables::{names, IptablesOptions, IptablesProxier, IptablesDataplane};
use kproxy_oracle::{scenarios, Dataplane, Scenario};
use kproxy_core::{IpFamily, Proxier, SyncRequest};

const V4: IpFamily = IpFamily::V4;

/// The fake, refusing the next `fail` restores and recording the inputs;
/// it reads rules cheaply (as iptables-nft does) unless `legacy`.
#[derive(Debug, Default)]
struct Recording {
    inner: FakeIptables,
    fail: usize,
    restores: Vec<String>,
    legacy: bool,
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
    async fn digests(&mut self, family: IpFamily, table: Table, chains: Option<&[String]>) -> Result<Option<Digests>, KernelError> {
        if self.legacy {
            return Ok(None);
        }
        self.inner.digests(family, table, chains).await
    }
}

fn scenario(name: &str) -> Scenario {
    scenarios::all().into_iter().find(|s| s.name == name).unwrap()
}

fn proxier(s: &Scenario) -> IptablesProxier<Recording> {
    let mut p = IptablesDataplane::proxier(kproxy_oracle::fixtures::NODE_NAME, s.config.clone(), Recording::default(), IptablesOptions::default()).unwrap();
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
    p.sync(SyncRequest { full: true }).await.unwrap();
    let repair = p.kernel().restores.last().unwrap().clone();
    assert!(repair.contains(&format!(":{victim} - [0:0]")) && repair.contains("-I PREROUTING 1"), "{repair}");
    assert!(!repair.contains(":KUBE-SEP-"), "only the damaged chains are rewritten:\n{repair}");
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

/// A rule's text with one address swapped: damage that keeps every chain's
/// rule count.
fn replace_in(p: &mut IptablesProxier<Recording>, table: Table, chain: &str, from: &str, to: &str) {
    let rules = p.kernel_mut().inner.table_mut(V4, table).chains.get_mut(chain).unwrap();
    let i = rules.iter().position(|r| r.args().contains(from)).unwrap_or_else(|| panic!("no rule with {from} in {chain}"));
    let text = rules[i].args().replace(from, to);
    rules[i] = kproxy_backend_iptables::rule::Rule::parse(&text, V4).unwrap();
}

#[tokio::test]
async fn a_periodic_sync_repairs_rules_changed_in_place_and_flushed_chains() {
    let s = scenario("cluster_ip");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    // Same outline, other content: a ClusterIP rule pointed elsewhere, and a
    // service chain flushed.
    replace_in(&mut p, Table::Nat, "KUBE-SERVICES", "172.30.0.41", "172.30.0.42");
    let svc = p.kernel().inner.table(V4, Table::Nat).chains.keys().find(|c| c.starts_with("KUBE-SVC-")).unwrap().clone();
    p.kernel_mut().inner.table_mut(V4, Table::Nat).chains.get_mut(&svc).unwrap().clear();
    p.sync(SyncRequest { full: true }).await.unwrap();
    let repair = p.kernel().restores.last().unwrap().clone();
    assert!(repair.contains(":KUBE-SERVICES - [0:0]") && repair.contains(&format!(":{svc} - [0:0]")), "{repair}");
    assert_cases(&p, &s);
    p.sync(SyncRequest { full: true }).await.unwrap();
    assert_eq!(p.kernel().restores.last().unwrap(), "", "repaired: nothing left to do");
}

#[tokio::test]
async fn a_change_from_outside_is_never_folded_into_a_partial_sync() {
    let s = scenario("cluster_ip");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    // KUBE-SERVICES is damaged, then a partial sync edits it for another
    // service: the damage is repaired then, not recorded as kproxy's.
    replace_in(&mut p, Table::Nat, "KUBE-SERVICES", "172.30.0.41", "172.30.0.42");
    let other = kproxy_oracle::fixtures::service("ns1", "late", &["172.30.0.50"]).port("p80", 80, "TCP", 0).build();
    let eps = kproxy_oracle::fixtures::slice("ns1", "late", "late-1", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint("10.180.0.50", kproxy_oracle::fixtures::NODE_NAME, kproxy_oracle::fixtures::EndpointState::Ready)
        .build();
    p.on_service_update(None, Some(&other));
    p.on_endpoint_slice_update(&eps, false);
    p.sync(SyncRequest::default()).await.unwrap();
    let text = p.kernel().restores.last().unwrap().clone();
    assert!(text.split("*filter").next().unwrap().contains(":KUBE-SERVICES - [0:0]"), "nat KUBE-SERVICES rewritten whole: {text}");
    assert_cases(&p, &s);
}

#[tokio::test]
async fn without_cheap_reads_each_periodic_sync_is_a_full_restore() {
    let s = scenario("cluster_ip");
    let mut p = IptablesDataplane::proxier(kproxy_oracle::fixtures::NODE_NAME, s.config.clone(), Recording { legacy: true, ..Recording::default() }, IptablesOptions::default()).unwrap();
    s.feed(&mut p);
    p.sync(SyncRequest::default()).await.unwrap();
    replace_in(&mut p, Table::Nat, "KUBE-SERVICES", "172.30.0.41", "172.30.0.42");
    assert!(!p.sync(SyncRequest::default()).await.unwrap().full);
    assert!(p.sync(SyncRequest { full: true }).await.unwrap().full, "iptables-legacy: everything rewritten");
    assert_cases(&p, &s);
}

/// With upstream's nfacct counters present, the INVALID drop and each
/// localhost NodePort count into them with upstream's rules; every case
/// still gets its verdict (the counting rules change nothing else).
#[tokio::test]
async fn nfacct_counters_are_written_as_upstream_s() {
    let s = scenario("node_port");
    let options = IptablesOptions { nfacct: true, localhost_node_ports: true, ..IptablesOptions::default() };
    let mut p = IptablesDataplane::proxier(kproxy_oracle::fixtures::NODE_NAME, s.config.clone(), Recording::default(), options).unwrap();
    s.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let filter = p.kernel().inner.save(V4, Table::Filter);
    assert!(filter.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"), "{filter}");
    let nat = p.kernel().inner.save(V4, Table::Nat);
    let counting: Vec<&str> = nat.lines().filter(|l| l.contains("--nfacct-name localhost_nps_accepted_pkts")).collect();
    assert!(!counting.is_empty() && counting.iter().all(|l| l.starts_with("-A KUBE-NODEPORTS") && l.contains("-d 127.0.0.0/8")), "{nat}");
    assert_cases(&p, &s);
}

/// Handing the node to IPVS mode in the same flavour: IPVS mode's first
/// sync rewrote the chains both modes name alike; the cleanup that keeps
/// those removes iptables mode's own chains and their jumps only.
#[tokio::test]
async fn a_cleanup_keeping_the_shared_chains_removes_only_iptables_mode_s_own() {
    let s = scenario("node_port");
    let mut p = proxier(&s);
    p.sync(SyncRequest::default()).await.unwrap();
    let shared = [names::SERVICES, names::POSTROUTING, names::MARK_MASQ, names::FORWARD, names::PROXY_FIREWALL];
    // What IPVS mode's first sync leaves in the shared chains: none of
    // iptables mode's chains referred to.
    let rewrite: String = shared.iter().map(|c| format!(":{c} - [0:0]\n")).collect();
    for table in ["nat", "filter"] {
        let declared: String = rewrite.lines().filter(|l| p.kernel().inner.table(V4, if table == "nat" { Table::Nat } else { Table::Filter }).chains.contains_key(&l[1..l.find(' ').unwrap()])).map(|l| format!("{l}\n")).collect();
        p.kernel_mut().inner.restore(V4, &format!("*{table}\n{declared}COMMIT\n")).unwrap();
    }
    let before_nat: Vec<String> = p.kernel().inner.table(V4, Table::Nat).chains.keys().cloned().collect();
    assert!(before_nat.iter().any(|c| c.starts_with("KUBE-SVC-")) && before_nat.iter().any(|c| c == names::NODEPORTS), "{before_nat:?}");
    p.dataplane_mut().cleanup_keeping(&|c| shared.contains(&c)).await.unwrap();
    for table in [Table::Nat, Table::Filter] {
        let chains = &p.kernel().inner.table(V4, table).chains;
        let kube: Vec<&String> = chains.keys().filter(|c| c.starts_with("KUBE-")).collect();
        assert!(kube.iter().all(|c| shared.contains(&c.as_str())), "{table:?}: {kube:?}");
        for (chain, rules) in chains.iter().filter(|(c, _)| !c.starts_with("KUBE-")) {
            for rule in rules {
                let target = rule.args();
                assert!(!target.contains("KUBE-") || shared.iter().any(|s| target.ends_with(&format!("-j {s}"))), "{table:?} {chain}: a jump to a removed chain stayed: {target}");
            }
        }
    }
    // The shared chains' own jumps stay.
    let nat = &p.kernel().inner.table(V4, Table::Nat).chains;
    assert!(nat["PREROUTING"].iter().any(|r| r.args().ends_with("-j KUBE-SERVICES")), "{:?}", nat["PREROUTING"]);
}
