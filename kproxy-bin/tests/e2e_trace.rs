//! `kproxy trace` on a node that upstream kube-proxy v1.34.4 programs in
//! iptables mode, through the real API server: for every case of these
//! scenarios the trace of upstream's live rules gives the verdict the
//! oracle states and the real packets meet there. Needs root and the e2e
//! binaries; skips without, must run in CI.

use std::time::{Duration, Instant};

mod common;

use kproxy_oracle::{scenarios, Dataplane};
use kproxy_e2e::{e2e_binaries, scenario, ControlPlane, ProxyKind};
use kproxy_testkit::{check_scenario_for, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

#[test]
fn trace_reads_upstream_kube_proxy_s_iptables_rules() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("trace_reads_upstream_kube_proxy_s_iptables_rules") else { return };
    let mut cp = ControlPlane::start(&bins).unwrap();
    let api = cp.admin().unwrap();
    let kubeconfig = cp.kubeconfig(ProxyKind::Upstream.user()).unwrap();
    let wanted = ["cluster_ip", "node_port", "no_endpoints", "session_affinity", "external_policy_local_with_local_endpoints", "load_balancer_source_ranges"];
    let mut failures = Vec::new();
    for s in scenarios::all().into_iter().filter(|s| wanted.contains(&s.name)) {
        let mut topo = Topology::build(&s).unwrap();
        cp.attach(&topo.node).unwrap();
        scenario::apply(&api, &s).unwrap();
        scenario::start_proxy(ProxyKind::Upstream, &mut topo.node, &scenario::config_in(&s, &kubeconfig, Dataplane::Iptables), cp.dir(), &bins.path("kube-proxy")).unwrap();
        let start = Instant::now();
        while !check_scenario_for(&topo, &s, Dataplane::Iptables).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "{}: upstream never served", s.name);
            std::thread::sleep(Duration::from_millis(200));
        }
        failures.extend(common::trace::disagreements(&topo, &s, BIN, Dataplane::Iptables, false));
        drop(topo);
        scenario::delete(&api, &s).unwrap();
    }
    assert!(failures.is_empty(), "kproxy trace misreads upstream's rules:\n{}", failures.join("\n"));
}
