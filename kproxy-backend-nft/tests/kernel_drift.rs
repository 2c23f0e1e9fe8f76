//! Damage from outside that keeps the table's outline (same chains, rule
//! counts and sets) is repaired by the next full sync: a flushed map, a
//! rule replaced in place, a deleted or a foreign element, a base chain's
//! policy. Each is checked with real traffic before and after. Needs root.

use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftOptions, NftDataplane};
use kproxy_oracle::fixtures as fx;
use kproxy_oracle::scenarios;
use kproxy_core::{Proxier, SyncRequest};
use kproxy_testkit::{check_scenario, kernel_tests_enabled, probe, Seen, Topology};

/// The handle of the first rule of `chain`, from `nft -a list chain`.
fn first_rule_handle(topo: &Topology, table: &str, chain: &str) -> String {
    let listing = topo.node.exec(&["nft", "-a", "list", "chain", "ip", table, chain]).unwrap();
    let line = listing.lines().find(|l| l.contains("# handle") && !l.contains("chain ")).unwrap_or_else(|| panic!("no rule in {chain}:\n{listing}"));
    line.rsplit("# handle ").next().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_repairs_damage_that_keeps_the_outline() {
    if !kernel_tests_enabled("a_full_sync_repairs_damage_that_keeps_the_outline") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let topo = Topology::build(&scenario).unwrap();
    let kernel = NftKernel::in_netns(topo.node.name()).unwrap();
    // No forced periodic rebuild: only the drift check may repair.
    let options = NftOptions { rebuild_every_full_syncs: 0, ..NftOptions::default() };
    let mut p = NftDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), kernel, options).unwrap();
    scenario.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let check = || tokio::task::block_in_place(|| check_scenario(&topo, &scenario));
    assert!(check().is_empty());

    /// One damage: what it is, and the `nft` command that does it to a table.
    type Damage = (&'static str, fn(&Topology, &str) -> String);
    let damages: [Damage; 5] = [
        ("a flushed slot map", |_, t| format!("flush map ip {t} cluster-slots-tcp-2")),
        ("a dispatch rule replaced in place", |topo, t| format!("replace rule ip {t} services handle {} ip daddr 172.30.0.0/16 accept", first_rule_handle(topo, t, "services"))),
        ("a foreign element", |_, t| format!("add element ip {t} firewall-services {{ 172.30.0.41 . tcp . 80 }}")),
        ("a deleted element", |_, t| format!("delete element ip {t} cluster-ip-services {{ 172.30.0.41 . tcp . 80 }}")),
        ("a base chain's policy", |_, t| format!("add chain ip {t} filter-forward {{ type filter hook forward priority 0 ; policy drop ; }}")),
    ];
    for (what, damage) in damages {
        let table = p.table().unwrap().to_string();
        let command = damage(&topo, &table);
        let args: Vec<&str> = std::iter::once("nft").chain(command.split(' ')).collect();
        topo.node.exec(&args).unwrap_or_else(|e| panic!("{what}: {e}"));
        // The first case (a pod to the ClusterIP) meets every damage: its
        // connections are no longer answered.
        let first = &scenario.cases[0];
        let seen = tokio::task::block_in_place(|| probe(&topo, &first.packet, 2, std::time::Duration::from_secs(2))).unwrap();
        assert!(seen.iter().any(|s| !matches!(s, Seen::Answered { .. })), "{what}: the damage did not show in traffic: {seen:?}");
        p.sync(SyncRequest { full: true }).await.unwrap();
        let failures = check();
        assert!(failures.is_empty(), "{what} was not repaired by a full sync:\n{}", failures.join("\n"));
    }
}
