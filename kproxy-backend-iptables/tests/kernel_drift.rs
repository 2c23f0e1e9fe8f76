//! Damage from outside that keeps every chain and rule count (a rule
//! replaced in place, a chain flushed and refilled with something else)
//! is repaired by the next periodic sync, on both flavours: iptables-nft by
//! comparing each chain's rules with what kproxy wrote (netlink digests)
//! and rewriting the changed chains; iptables-legacy by a full restore.
//! Traffic alone (counters) is never taken for damage. Each damage is
//! checked with real traffic before and after. Needs root.

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli, Kernel};
use kproxy_backend_iptables::render::Table;
use kproxy_backend_iptables::{IptablesOptions, IptablesDataplane};
use kproxy_oracle::{fixtures as fx, scenarios, Dataplane};
use kproxy_core::{IpFamily, Proxier, SyncRequest};
use kproxy_testkit::{check_scenario_for, kernel_tests_enabled, probe, Seen, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_sync_repairs_rules_changed_in_place() {
    if !kernel_tests_enabled("a_periodic_sync_repairs_rules_changed_in_place") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    for flavour in [Flavour::Nft, Flavour::Legacy] {
        let topo = Topology::build(&scenario).unwrap();
        let ns = topo.node.name().to_string();
        // No forced hourly restore: only the comparison may repair.
        let options = IptablesOptions { full_restore_every: 0, ..IptablesOptions::default() };
        let mut p = IptablesDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), IptablesCli::new(flavour, Some(&ns)), options).unwrap();
        scenario.feed(&mut p);
        p.sync(SyncRequest::default()).await.unwrap();
        let check = || tokio::task::block_in_place(|| check_scenario_for(&topo, &scenario, Dataplane::Iptables));
        assert!(check().is_empty(), "{flavour:?}: {:?}", check());

        if flavour == Flavour::Nft {
            // Traffic moved the counters; the rules are what kproxy wrote.
            let before = p.kernel_mut().digests(IpFamily::V4, Table::Nat, None).await.unwrap().unwrap();
            assert!(!before.is_empty());
            p.sync(SyncRequest { full: true }).await.unwrap();
            assert_eq!(p.repaired_chains(), 0, "traffic is not damage");
            let after = p.kernel_mut().digests(IpFamily::V4, Table::Nat, None).await.unwrap().unwrap();
            assert_eq!(before, after, "a periodic sync with nothing damaged changes nothing");
        }

        let tool = format!("iptables-{}", flavour.name());
        let svc_chain = {
            let out = topo.node.exec(&[&tool, "-t", "nat", "-S"]).unwrap();
            // The chain the first case's ClusterIP:80 jumps to.
            let rule = out.lines().find(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("172.30.0.41/32") && l.contains("--dport 80 ")).expect("the ClusterIP rule");
            rule.rsplit("-j ").next().unwrap().trim().to_string()
        };
        // (what, the iptables arguments that do it)
        let damages: Vec<(&str, Vec<String>)> = vec![
            (
                "the ClusterIP rule replaced in place",
                ["-t", "nat", "-R", "KUBE-SERVICES", "1", "-d", "172.30.0.41/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "RETURN"].map(String::from).to_vec(),
            ),
            ("a service chain flushed", vec!["-t".into(), "nat".into(), "-F".into(), svc_chain.clone()]),
        ];
        for (what, args) in damages {
            let mut argv = vec![tool.as_str(), "-w", "5"];
            argv.extend(args.iter().map(String::as_str));
            topo.node.exec(&argv).unwrap_or_else(|e| panic!("{flavour:?} {what}: {e}"));
            let first = &scenario.cases[0];
            let seen = tokio::task::block_in_place(|| probe(&topo, &first.packet, 2, std::time::Duration::from_secs(2))).unwrap();
            assert!(seen.iter().any(|s| !matches!(s, Seen::Answered { .. })), "{flavour:?} {what}: the damage did not show in traffic: {seen:?}");
            // The probes just made left unanswered, un-DNATed TCP flows to
            // the ClusterIP; a later connection that happens to reuse one's
            // source port would ride it whatever the rules say. They are
            // the damage's, not the rules': gone before judging the repair.
            let _ = topo.node.exec(&["conntrack", "-D", "-d", "172.30.0.41"]);
            // A partial sync with nothing to do leaves it (it edits nothing).
            p.sync(SyncRequest::default()).await.unwrap();
            p.sync(SyncRequest { full: true }).await.unwrap();
            let failures = check();
            assert!(failures.is_empty(), "{flavour:?}: {what} was not repaired by a periodic sync:\n{}", failures.join("\n"));
            if flavour == Flavour::Nft {
                assert!(p.repaired_chains() > 0, "{what}: repaired by rewriting chains, not by chance");
            }
        }
    }
}
