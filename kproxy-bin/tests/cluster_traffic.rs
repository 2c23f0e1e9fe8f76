//! The binary in cluster mode against an API server (a fake one that
//! speaks list and watch; the e2e suite runs the real kube-apiserver):
//! kproxy runs in a private node namespace, takes a scenario's objects
//! from the API, and is checked with real traffic through the API's
//! failure modes. Needs root (skips without, must run in CI).

mod common;

use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, Resource};
use kproxy_oracle::{fixtures as fx, scenarios, Scenario, Verdict};
use kproxy_testkit::{check_case, check_scenario, kernel_tests_enabled, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

fn has_table(topo: &Topology) -> bool {
    topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default().contains("kproxy-")
}

fn eventually(what: &str, seconds: u64, mut ok: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if start.elapsed() > Duration::from_secs(seconds) => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn put_scenario(api: &FakeApi, scenario: &Scenario) {
    api.put(&scenario.node);
    for s in &scenario.services {
        api.put(s);
    }
    for s in &scenario.slices {
        api.put(s);
    }
}

/// Starts kproxy (nftables mode) in `topo`'s node against `api`, with a
/// kubeconfig named after `tag`; returns the kubeconfig's path.
fn start_kproxy(topo: &mut Topology, api: &FakeApi, tag: &str) -> std::path::PathBuf {
    let kubeconfig = std::env::temp_dir().join(format!("kproxy-fake-kubeconfig-{tag}-{}", std::process::id()));
    api.kubeconfig(&kubeconfig);
    topo.node
        .spawn(&[BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--kubeconfig", kubeconfig.to_str().unwrap()])
        .unwrap();
    kubeconfig
}

/// Waits until every case of `scenario` passes.
fn until_scenario_passes(topo: &Topology, scenario: &Scenario) {
    eventually("the scenario never passed", 20, || {
        let failures = check_scenario(topo, scenario);
        failures.is_empty().then_some(()).ok_or_else(|| failures.join("\n"))
    });
}

#[test]
fn cluster_mode_follows_the_api_through_relists_and_outages() {
    if !kernel_tests_enabled("cluster_mode_follows_the_api_through_relists_and_outages") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let api = FakeApi::start_in_netns(topo.node.name());
    put_scenario(&api, &scenario);
    // A Service another proxy implements: never this proxy's.
    let mut foreign = fx::service("ns1", "foreign", &["172.30.0.77"]).port("p80", 80, "TCP", 0).build();
    foreign.metadata.labels = Some([("service.kubernetes.io/service-proxy-name".to_string(), "other".to_string())].into());
    api.put(&foreign);

    // Nothing is synced before both initial lists are complete.
    api.gate(Resource::EndpointSlices, true);
    let kubeconfig = std::env::temp_dir().join(format!("kproxy-fake-kubeconfig-{}", std::process::id()));
    api.kubeconfig(&kubeconfig);
    topo.node
        .spawn(&[BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--kubeconfig", kubeconfig.to_str().unwrap()])
        .unwrap();
    eventually("kproxy never listed services", 10, || {
        api.requests().iter().any(|r| r.starts_with("/api/v1/services?")).then_some(()).ok_or_else(|| format!("{:?}", api.requests()))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has_table(&topo), "synced before the EndpointSlice list was complete");
    api.gate(Resource::EndpointSlices, false);
    eventually("the scenario never passed", 15, || {
        let failures = check_scenario(&topo, &scenario);
        failures.is_empty().then_some(()).ok_or_else(|| failures.join("\n"))
    });
    let selector = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
    for path in ["/api/v1/services?", "/apis/discovery.k8s.io/v1/endpointslices?"] {
        assert!(api.requests().iter().any(|r| r.starts_with(path) && r.contains(selector)), "{path} without upstream's selector: {:?}", api.requests());
        // The current objects come as a list in pages, gzip accepted (the
        // API server compresses a large page), then a watch.
        let lists: Vec<String> = api.requests().into_iter().filter(|r| r.starts_with(path) && !r.contains("watch=")).collect();
        assert!(!lists.is_empty() && lists.iter().all(|r| r.contains("limit=200")), "{path} not listed in pages of 200: {lists:?}");
        assert!(lists.iter().all(|r| api.accepted_gzip().contains(r)), "{path} listed without accepting gzip: {:?}", api.accepted_gzip());
        assert!(!api.requests().iter().any(|r| r.contains("sendInitialEvents")), "{path}: a streaming list: {:?}", api.requests());
    }
    let mut foreign_packet = scenario.cases[0].packet.clone();
    foreign_packet.dst = "172.30.0.77".parse().unwrap();
    check_case(&topo, &foreign_packet, &Verdict::NotService).unwrap();

    // A watch event: the slice loses its local endpoint.
    let packet = scenario.cases[0].packet.clone();
    let mut slice = scenario.slices[0].clone();
    slice.endpoints.retain(|e| e.addresses[0] == "10.180.1.1");
    api.put(&slice);
    let only_remote = Verdict::forward(&["10.180.1.1:8080"], false);
    eventually("a watch event never reached the kernel", 10, || check_case(&topo, &packet, &only_remote));

    // 410 Gone: the change made meanwhile is only visible by relisting.
    api.expire_watches();
    api.put(&scenario.slices[0]);
    eventually("the relist after 410 never reached the kernel", 15, || check_scenario(&topo, &scenario).is_empty().then_some(()).ok_or("not yet".into()));

    // The API server goes away: the rules stay and traffic flows.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(3));
    let failures = check_scenario(&topo, &scenario);
    assert!(failures.is_empty(), "traffic broke while the API server was down:\n{}", failures.join("\n"));
    // ... and comes back: kproxy reconnects (with backoff) and follows.
    api.delete(Resource::Services, "ns1", "svc1");
    api.set_down(false);
    let gone = Verdict::NotService;
    eventually("kproxy never reconnected", 30, || check_case(&topo, &packet, &gone));
    let _ = std::fs::remove_file(&kubeconfig);

    // The Starting Event about the Node, as upstream records it.
    let events = api.posted();
    assert!(
        events.iter().any(|e| e["reason"] == "Starting" && e["action"] == "StartKubeProxy" && e["regarding"]["name"] == fx::NODE_NAME),
        "no Starting event: {events:?}"
    );
    // deploy/'s ClusterRole allows every request kproxy made.
    let granted = common::deploy::granted();
    for request in api.requests() {
        let (group, resource, verb) = common::fake_api::rbac_of(&request);
        assert!(granted.contains(&(group.clone(), resource.clone(), verb.clone())), "deploy/rbac.yaml does not allow {verb} {group}/{resource} ({request})");
    }
}

/// A list longer than a page is read page by page: a Service on the
/// third page of 200 is programmed (its ClusterIP refuses: no endpoints),
/// and the pages after the first followed their `continue` token.
#[test]
fn a_list_longer_than_a_page_is_read_page_by_page() {
    if !kernel_tests_enabled("a_list_longer_than_a_page_is_read_page_by_page") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let api = FakeApi::start_in_netns(topo.node.name());
    put_scenario(&api, &scenario);
    // 450 more Services, without endpoints: 172.30.1.1 to 172.30.2.194.
    for i in 0..450u32 {
        let ip = format!("172.30.{}.{}", 1 + i / 256, 1 + i % 256);
        api.put(fx::service("fill", &format!("f{i:03}"), &[ip.as_str()]).port("p", 80, "TCP", 0).build());
    }
    let kubeconfig = start_kproxy(&mut topo, &api, "paged");
    until_scenario_passes(&topo, &scenario);
    let mut packet = scenario.cases[0].packet.clone();
    packet.dst = "172.30.2.193".parse().unwrap();
    packet.dport = 80;
    eventually("the last page's Service was never programmed", 15, || check_case(&topo, &packet, &Verdict::Reject));
    let _ = std::fs::remove_file(&kubeconfig);
    let pages = api.requests().into_iter().filter(|r| r.starts_with("/api/v1/services?") && r.contains("continue=")).count();
    assert!(pages >= 2, "the Services were not listed in pages: {:?}", api.requests());
}

/// The cluster's ServiceCIDR objects, watched: an unallocated address of
/// their ranges is dropped (nftables mode), let through (to a responder
/// beyond the node) once the object is deleted, and dropped again when a
/// new one holds it, each within a sync.
#[test]
fn service_cidr_objects_are_followed_through_the_watch() {
    if !kernel_tests_enabled("service_cidr_objects_are_followed_through_the_watch") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "service_cidrs").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let api = FakeApi::start_in_netns(topo.node.name());
    put_scenario(&api, &scenario);
    let cidr = |name: &str, cidrs: &[&str]| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": name}, "spec": {"cidrs": cidrs},
        })
    };
    api.put(cidr("kubernetes", &["172.30.0.0/16", "fd00:172:30::/112"]));
    let kubeconfig = start_kproxy(&mut topo, &api, "cidrs");
    until_scenario_passes(&topo, &scenario);
    let unallocated = scenario.cases.iter().find(|c| c.packet.dst.to_string() == "172.30.0.99").unwrap().packet.clone();
    let leaked = Verdict::NotService;
    // Answered by the responder beyond the node: let through.
    let answered = |topo: &Topology| match kproxy_testkit::probe(topo, &unallocated, 1, Duration::from_secs(2)) {
        Ok(seen) if matches!(seen.as_slice(), [kproxy_testkit::Seen::Answered { pod, .. }] if *pod == unallocated.dst) => Ok(()),
        other => Err(format!("not let through: {other:?}")),
    };
    api.delete(Resource::ServiceCidrs, "", "kubernetes");
    eventually("the deleted ServiceCIDR still dropped traffic", 15, || answered(&topo));
    check_case(&topo, &unallocated, &leaked).unwrap();
    api.put(cidr("narrow", &["172.30.0.0/24"]));
    eventually("a new ServiceCIDR never applied", 15, || check_case(&topo, &unallocated, &Verdict::Drop));
    let _ = std::fs::remove_file(&kubeconfig);

    let granted = common::deploy::granted();
    for request in api.requests() {
        let (group, resource, verb) = common::fake_api::rbac_of(&request);
        assert!(granted.contains(&(group.clone(), resource.clone(), verb.clone())), "deploy/rbac.yaml does not allow {verb} {group}/{resource} ({request})");
    }
    assert!(api.requests().iter().any(|r| r.starts_with("/apis/networking.k8s.io/v1/servicecidrs?") && r.contains("watch=")), "never watched ServiceCIDRs");
}

/// `/healthz` fails (503, `nodeEligible: false`) while the Node carries the
/// cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint, so load
/// balancers drain the node, and recovers when the taint goes; `/livez`
/// stays 200 throughout. The body is upstream's, with the per-family status.
#[test]
fn healthz_follows_the_autoscaler_s_taint_and_livez_does_not() {
    if !kernel_tests_enabled("healthz_follows_the_autoscaler_s_taint_and_livez_does_not") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let api = FakeApi::start_in_netns(topo.node.name());
    put_scenario(&api, &scenario);
    let kubeconfig = start_kproxy(&mut topo, &api, "taint");
    let get = |path: &str| -> (String, serde_json::Value) {
        let (code, body) = common::http_get(&topo, &format!("http://127.0.0.1:10256{path}"));
        (code, serde_json::from_str(body.trim()).unwrap_or_default())
    };
    let healthz_is = |code: &'static str| {
        move || {
            let (got, body) = get("/healthz");
            (got == code).then_some(()).ok_or_else(|| format!("/healthz {got}: {body}"))
        }
    };
    // Before the first sync /healthz is 200 without a per-family status,
    // as upstream's: wait for the sync.
    eventually("never healthy after a sync", 20, || {
        let (code, body) = get("/healthz");
        (code == "200" && body["status"]["IPv4"].is_object()).then_some(()).ok_or_else(|| format!("/healthz {code}: {body}"))
    });
    let (_, body) = get("/healthz");
    assert_eq!((&body["nodeEligible"], &body["healthy"]), (&true.into(), &true.into()), "{body}");
    assert_eq!(body["status"]["IPv4"]["healthy"], true, "per-family status: {body}");

    let mut tainted = scenario.node.clone();
    tainted.spec.get_or_insert_with(Default::default).taints =
        Some(vec![k8s_openapi::api::core::v1::Taint { key: "ToBeDeletedByClusterAutoscaler".into(), value: Some("1764907361".into()), effect: "NoSchedule".into(), ..Default::default() }]);
    api.put(&tainted);
    eventually("the taint never failed /healthz", 20, healthz_is("503"));
    let (_, body) = get("/healthz");
    assert_eq!((&body["nodeEligible"], &body["healthy"]), (&false.into(), &true.into()), "{body}");
    assert_eq!(get("/livez").0, "200", "/livez ignores the node");

    api.put(&scenario.node);
    eventually("/healthz never recovered", 20, healthz_is("200"));
    let _ = std::fs::remove_file(&kubeconfig);
}

/// `--kube-api-qps` and `--kube-api-burst` (clientConnection.qps/burst)
/// throttle the API client as client-go's token bucket does: with a burst
/// of 1 and half a request per second, the start-up requests after the
/// first wait for their tokens, and the metrics show it; traffic is
/// served all the same.
#[test]
fn the_api_client_is_rate_limited() {
    if !kernel_tests_enabled("the_api_client_is_rate_limited") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let api = FakeApi::start_in_netns(topo.node.name());
    put_scenario(&api, &scenario);
    let kubeconfig = std::env::temp_dir().join(format!("kproxy-fake-kubeconfig-qps-{}", std::process::id()));
    api.kubeconfig(&kubeconfig);
    let args = [BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--kubeconfig", kubeconfig.to_str().unwrap(), "--kube-api-qps=0.5", "--kube-api-burst=1"];
    topo.node.spawn(&args).unwrap();
    let case = &scenario.cases[0];
    eventually("never served", 60, || check_case(&topo, &case.packet, &case.expected));
    let metrics = topo.node.exec(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:10249/metrics"]).unwrap();
    let waited: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("rest_client_rate_limiter_duration_seconds_sum"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let requests: f64 = metrics.lines().filter(|l| l.starts_with("rest_client_requests_total")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert!(requests >= 4.0 && waited > 0.0, "requests {requests}, time spent waiting for tokens {waited} s:\n{metrics}");
    let _ = std::fs::remove_file(&kubeconfig);
}
