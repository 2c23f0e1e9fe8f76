//! The iptables backend against real faults, in private namespaces, on
//! both flavours: a proxier that goes away (as a killed process does, its
//! rules left behind) and a new one whose first sync rewrites everything
//! while a connection is held open and new ones keep coming; and a
//! `KUBE-SVC-` chain deleted from outside, which the next periodic sync
//! puts back. Needs root.

use std::net::IpAddr;
use std::time::Duration;

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::{names, IptablesOptions, IptablesProxier, IptablesDataplane};
use kproxy_oracle::{fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_core::{Proxier, Protocol, ServicePortName, SyncRequest};
use kproxy_testkit::{check_scenario_for, kernel_tests_enabled, probe, Seen, Topology, KPT};

const VIP: &str = "172.30.0.41";

async fn proxier(s: &Scenario, topo: &Topology, flavour: Flavour) -> IptablesProxier<IptablesCli> {
    let mut p = IptablesDataplane::proxier(fx::NODE_NAME, s.config.clone(), IptablesCli::new(flavour, Some(topo.node.name())), IptablesOptions::default()).unwrap();
    s.feed(&mut p);
    p.sync(SyncRequest::default()).await.unwrap();
    p
}

fn kpt(mode: &str, seconds: &str) -> Vec<String> {
    ["python3", KPT, mode, "--src", fx::LOCAL_CLIENT_POD, "--dst", VIP, "--port", "80", "--seconds", seconds].map(String::from).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_proxier_takes_over_without_breaking_connections() {
    if !kernel_tests_enabled("a_new_proxier_takes_over_without_breaking_connections") {
        return;
    }
    let s = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        let mut topo = Topology::build(&s).unwrap();
        let first = proxier(&s, &topo, flavour).await;
        let client: IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
        let pod = topo.pods.get_mut(&client).unwrap();
        let args = kpt("hold", "5");
        let held = pod.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let args = kpt("watch", "4");
        let watched = pod.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _second = proxier(&s, &topo, flavour).await;
        let pod = topo.pods.get_mut(&client).unwrap();
        let (watch, hold) = tokio::task::block_in_place(|| (pod.wait_output(watched).unwrap(), pod.wait_output(held).unwrap()));
        eprintln!("{}: new connections: {} established: {}", flavour.name(), watch.trim(), hold.trim());
        assert!(watch.contains("failed 0"), "{}: new connections failed across the takeover: {watch}", flavour.name());
        assert!(hold.starts_with("held"), "{}: the established connection broke: {hold}", flavour.name());
        let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Iptables));
        assert!(failures.is_empty(), "{}: {}", flavour.name(), failures.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_chain_deleted_from_outside_is_repaired() {
    if !kernel_tests_enabled("a_service_chain_deleted_from_outside_is_repaired") {
        return;
    }
    let s = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let chain = names::service_chain(&ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp));
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        let topo = Topology::build(&s).unwrap();
        let mut p = proxier(&s, &topo, flavour).await;
        let iptables = format!("iptables-{}", flavour.name());
        // What an operator might do: drop the dispatch rule, then the chain.
        let save = topo.node.exec(&[&format!("{iptables}-save"), "-t", "nat"]).unwrap();
        let dispatch = save.lines().find(|l| l.starts_with("-A KUBE-SERVICES") && l.ends_with(&format!("-j {chain}"))).unwrap().to_string();
        let mut delete = vec![iptables.as_str(), "-t", "nat", "-D"];
        let rule = dispatch.trim_start_matches("-A ").to_string();
        let tokens = kproxy_backend_iptables::rule::tokenize(&rule).unwrap();
        delete.extend(tokens.iter().map(String::as_str));
        topo.node.exec(&delete).unwrap();
        topo.node.exec(&[&iptables, "-t", "nat", "-F", &chain]).unwrap();
        topo.node.exec(&[&iptables, "-t", "nat", "-X", &chain]).unwrap();
        // One probe (a failing scenario check waits out every timeout).
        let seen = tokio::task::block_in_place(|| probe(&topo, &s.cases[0].packet, 1, Duration::from_millis(800))).unwrap();
        assert!(!matches!(seen[..], [Seen::Answered { .. }]), "{}: deleting the chain changed nothing: {seen:?}", flavour.name());
        let report = p.sync(SyncRequest { full: true }).await.unwrap();
        assert!(report.full);
        let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Iptables));
        assert!(failures.is_empty(), "{}: not repaired: {}", flavour.name(), failures.join("\n"));
    }
}
