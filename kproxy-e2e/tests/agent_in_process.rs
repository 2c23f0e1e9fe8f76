//! The runtime an embedder reuses, driven in this test's own process (no
//! kproxy binary): kproxy-agent's kube source feeds core's `SyncRunner`,
//! which runs the nftables backend, against a real kube-apiserver. A
//! thread enters the node's namespace, so the API client, the netlink
//! sockets and `nft` all work there. Every case of a shared scenario must
//! pass with real traffic, then an endpoint change made through the API
//! must reach the kernel. Needs root and the e2e binaries
//! (`e2e/k8s/build.sh`); skips without, must run in CI.

use std::time::Duration;

use kproxy_agent::kube_source;
use kproxy_agent::observer::SyncObserver;
use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftDataplane, NftOptions};
use kproxy_core::runner::{RunnerConfig, SyncEvent, SyncRunner};
use kproxy_core::{IpFamily, Proxier};
use kproxy_e2e::nodes::within;
use kproxy_e2e::{e2e_binaries, scenario, ControlPlane};
use kproxy_oracle::{fixtures as fx, scenarios, Verdict};
use kproxy_testkit::{check_case, check_scenario, Topology};

#[test]
fn the_agent_runs_the_nftables_backend_in_process_from_the_api_server() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("the_agent_runs_the_nftables_backend_in_process_from_the_api_server") else { return };
    let s = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut cp = ControlPlane::start(&bins).unwrap();
    let api = cp.admin().unwrap();
    let topo = Topology::build(&s).unwrap();
    cp.attach(&topo.node).unwrap();
    scenario::apply(&api, &s).unwrap();
    let kubeconfig = cp.kubeconfig("kproxy").unwrap();
    let (netns, config) = (topo.node.name().to_string(), s.config.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || -> Result<(), String> {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).map_err(|e| e.to_string())?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let file = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
            let config_k = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.map_err(|e| e.to_string())?;
            let client = kube::Client::try_from(config_k).map_err(|e| e.to_string())?;
            let kernel = NftKernel::new().map_err(|e| e.to_string())?;
            let mut proxier = NftDataplane::proxier(fx::NODE_NAME, config, kernel, NftOptions::default()).map_err(|e| e.to_string())?;
            let runner = SyncRunner::new(RunnerConfig::default()).map_err(|e| e.to_string())?;
            let updates = kube_source::updates(client, fx::NODE_NAME);
            let mut observer = SyncObserver::new(IpFamily::V4, ());
            tokio::select! {
                r = runner.run_stream(&mut proxier, updates, |e: &SyncEvent<'_>| observer.observe(e)) => r.map_err(|e| e.to_string())?,
                _ = stopped => {}
            }
            proxier.cleanup().await.map_err(|e| e.to_string())
        })
    });
    let served = within("every case passes", Duration::from_secs(60), || {
        let f = check_scenario(&topo, &s);
        if f.is_empty() { Ok(()) } else { Err(f.join("\n")) }
    });
    let moved = served.as_ref().ok().map(|_| {
        // Down to one endpoint through the API: only it answers.
        let pod = "10.180.0.1";
        let mut slice = s.slices[0].clone();
        slice.endpoints.retain(|e| e.addresses[0] == pod);
        api.apply(slice).unwrap();
        let only = Verdict::forward(&[&format!("{pod}:8080")], false);
        within("the endpoint change", Duration::from_secs(30), || check_case(&topo, &s.cases[0].packet, &only))
    });
    let _ = stop.send(());
    agent.join().expect("the agent thread").expect("the agent ran and cleaned up");
    served.unwrap();
    moved.unwrap().unwrap();
}
