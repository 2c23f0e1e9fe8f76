//! Conversion: what upstream skips, and bad input.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::LoadBalancerIngress;

use super::*;
use crate::model::{IpFamily, Protocol, ServicePortName, SourceRanges};
use kproxy_oracle::fixtures::{service, slice, EndpointState};

fn ports(svc: &k8s_openapi::api::core::v1::Service, family: IpFamily) -> Vec<String> {
    service_ports(svc, family).keys().map(|k| format!("{k}/{}", k.protocol)).collect()
}

#[test]
fn a_plain_service_converts_every_field() {
    let svc = service("ns1", "svc1", &["172.30.0.41"])
        .port("p80", 80, "TCP", 3001)
        .port("", 53, "UDP", 0)
        .load_balancer(&["1.2.3.4", "2001:db8::4"])
        .external_ips(&["192.168.99.11", "fd00::11"])
        .source_ranges(&["203.0.113.0/25", "2001:db8::/64"])
        .external_policy_local(30000)
        .affinity(600)
        .build();
    let got = service_ports(&svc, IpFamily::V4);
    let p80 = &got[&ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp)];
    assert_eq!(p80.cluster_ip.to_string(), "172.30.0.41");
    assert_eq!((p80.port, p80.node_port), (80, Some(3001)));
    assert_eq!(p80.load_balancer_vips, vec!["1.2.3.4".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(p80.external_ips, vec!["192.168.99.11".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(p80.source_ranges, SourceRanges::Only(vec!["203.0.113.0/25".parse().unwrap()]));
    assert!(p80.external_policy_local && !p80.internal_policy_local);
    assert_eq!(p80.health_check_node_port, Some(30000));
    assert_eq!(p80.affinity_timeout_seconds, Some(600));
    let dns = &got[&ServicePortName::new("ns1", "svc1", "", Protocol::Udp)];
    assert_eq!((dns.port, dns.node_port), (53, None));
}

/// Upstream's `ExternalPolicyLocal` holds for every externally accessible
/// Service, and a ClusterIP Service with externalIPs is one (found by the
/// differential test: upstream kept the client's source on such an
/// externalIP, kproxy masqueraded it).
#[test]
fn external_policy_local_holds_for_a_cluster_ip_service_with_external_ips() {
    let policy = |svc: &k8s_openapi::api::core::v1::Service| {
        service_ports(svc, IpFamily::V4).values().next().map(|p| p.external_policy_local).unwrap()
    };
    let with_eip = service("ns1", "eip", &["172.30.0.41"]).port("p80", 80, "TCP", 0).external_ips(&["192.168.99.11"]).external_policy_local(0).build();
    assert!(policy(&with_eip));
    let without = service("ns1", "plain", &["172.30.0.42"]).port("p80", 80, "TCP", 0).external_policy_local(0).build();
    assert!(!policy(&without), "not externally accessible: the field means nothing");
}

#[test]
fn skips_what_upstream_skips() {
    let headless = service("ns", "headless", &["None"]).port("p", 80, "TCP", 0).build();
    assert!(service_ports(&headless, IpFamily::V4).is_empty());
    let mut empty_ip = service("ns", "empty", &[]).port("p", 80, "TCP", 0).build();
    empty_ip.spec.as_mut().unwrap().cluster_ip = Some(String::new());
    assert!(service_ports(&empty_ip, IpFamily::V4).is_empty());
    let external_name = service("ns", "ext", &["172.30.0.1"]).type_("ExternalName").port("p", 80, "TCP", 0).build();
    assert!(service_ports(&external_name, IpFamily::V4).is_empty());
    for label in [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL] {
        let mut other = service("ns", "other", &["172.30.0.2"]).port("p", 80, "TCP", 0).build();
        other.metadata.labels = Some(BTreeMap::from([(label.to_string(), "x".to_string())]));
        assert!(service_ports(&other, IpFamily::V4).is_empty(), "{label}");
    }
    let v6_only = service("ns", "v6", &["fd00::1"]).port("p", 80, "TCP", 0).build();
    assert!(service_ports(&v6_only, IpFamily::V4).is_empty());
    assert_eq!(ports(&v6_only, IpFamily::V6), vec!["ns/v6:p/TCP"]);
}

#[test]
fn proxy_mode_load_balancer_ingress_is_skipped() {
    let mut svc = service("ns", "lb", &["172.30.0.3"]).port("p", 80, "TCP", 3000).load_balancer(&["1.2.3.4"]).build();
    let ingress = svc.status.as_mut().unwrap().load_balancer.as_mut().unwrap().ingress.as_mut().unwrap();
    ingress.push(LoadBalancerIngress {
        ip: Some("5.6.7.8".into()),
        ip_mode: Some("Proxy".into()),
        ..Default::default()
    });
    ingress.push(LoadBalancerIngress { hostname: Some("lb.example".into()), ..Default::default() });
    let got = service_ports(&svc, IpFamily::V4);
    let vips: Vec<String> = got.values().next().unwrap().load_balancer_vips.iter().map(|i| i.to_string()).collect();
    assert_eq!(vips, vec!["1.2.3.4"]);
}

#[test]
fn bad_ports_are_skipped_one_by_one() {
    let svc = service("ns", "bad", &["172.30.0.4"])
        .port("zero", 0, "TCP", 0)
        .port("big", 70000, "TCP", 0)
        .port("neg", -1, "TCP", 0)
        .port("icmp", 80, "ICMP", 0)
        .port("good", 80, "TCP", 99999)
        .port("good", 81, "TCP", 0)
        .port("same-number", 80, "TCP", 0)
        .port("udp", 80, "UDP", 0)
        .build();
    assert_eq!(ports(&svc, IpFamily::V4), vec!["ns/bad:good/TCP", "ns/bad:udp/UDP"]);
    let good = &service_ports(&svc, IpFamily::V4)[&ServicePortName::new("ns", "bad", "good", Protocol::Tcp)];
    assert_eq!((good.port, good.node_port), (80, None), "the first duplicate wins, a bad nodePort is dropped");
}

#[test]
fn invalid_source_ranges_fail_closed_but_other_family_ranges_do_not_restrict() {
    let with = |ranges: &[&str], family| {
        let cluster_ips: &[&str] = &["172.30.0.5", "fd00::5"];
        let svc = service("ns", "fw", cluster_ips).port("p", 80, "TCP", 0).load_balancer(&["1.2.3.4"]).source_ranges(ranges).build();
        service_ports(&svc, family).into_values().next().unwrap().source_ranges
    };
    assert_eq!(with(&["not-a-cidr"], IpFamily::V4), SourceRanges::Only(vec![]));
    assert_eq!(with(&["not-a-cidr", " 10.0.0.0/8 "], IpFamily::V4), SourceRanges::Only(vec!["10.0.0.0/8".parse().unwrap()]));
    assert_eq!(with(&["2001:db8::/64"], IpFamily::V4), SourceRanges::AllowAll);
    assert_eq!(with(&[], IpFamily::V4), SourceRanges::AllowAll);
}

#[test]
fn unparsable_addresses_are_skipped_and_the_rest_kept() {
    let svc = service("ns", "ips", &["172.30.0.6"])
        .port("p", 80, "TCP", 0)
        .external_ips(&["banana", "192.168.99.1", "010.001.002.003"])
        .build();
    let info = service_ports(&svc, IpFamily::V4).into_values().next().unwrap();
    let got: Vec<String> = info.external_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(got, vec!["10.1.2.3", "192.168.99.1"]);
    let bad_cluster_ip = service("ns", "bad-ip", &["172.30.0.999"]).port("p", 80, "TCP", 0).build();
    assert!(service_ports(&bad_cluster_ip, IpFamily::V4).is_empty());
}

#[test]
fn absurdly_long_names_skip_only_their_object() {
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let svc = service("ns", &long, &["172.30.0.7"]).port("p", 80, "TCP", 0).build();
    assert!(service_ports(&svc, IpFamily::V4).is_empty());
    let svc = service("ns", "ok", &["172.30.0.7"]).port(&long, 80, "TCP", 0).port("p", 81, "TCP", 0).build();
    assert_eq!(ports(&svc, IpFamily::V4), vec!["ns/ok:p/TCP"]);
    let hostile = "a\"b;c}{d\ne".repeat(25);
    let svc = service("ns", "ok", &["172.30.0.7"]).port(&hostile[..250], 80, "TCP", 0).build();
    assert_eq!(service_ports(&svc, IpFamily::V4).len(), 1, "hostile but short names are the backends' job to quote");
}

#[test]
fn slices_convert_with_upstream_defaults() {
    let s = slice("ns", "svc", "svc-abc", "IPv4")
        .port("p", 8080, "TCP")
        .endpoint("10.0.0.1", "node-a", EndpointState::Ready)
        .endpoint("10.0.0.2", "node-b", EndpointState::ServingTerminating)
        .endpoint("fd00::3", "node-a", EndpointState::Ready)
        .endpoint("garbage", "node-a", EndpointState::Ready)
        .build();
    let info = slice_info(&s, IpFamily::V4, "node-a").unwrap();
    assert_eq!(info.service.to_string(), "ns/svc");
    let eps = &info.endpoints[&ServicePortName::new("ns", "svc", "p", Protocol::Tcp)];
    assert_eq!(eps.len(), 2, "wrong family and garbage skipped");
    assert!(eps[0].ready && eps[0].serving && !eps[0].terminating && eps[0].is_local);
    assert!(!eps[1].ready && eps[1].serving && eps[1].terminating && !eps[1].is_local);
    assert_eq!(eps[0].port, 8080);
}

#[test]
fn slices_that_contribute_nothing() {
    let ok = || slice("ns", "svc", "s", "IPv4").port("p", 80, "TCP").endpoint("10.0.0.1", "n", EndpointState::Ready);
    assert!(slice_info(&ok().build(), IpFamily::V6, "n").is_none(), "other address type");
    let mut fqdn = ok().build();
    fqdn.address_type = "FQDN".into();
    assert!(slice_info(&fqdn, IpFamily::V4, "n").is_none());
    let mut unlabeled = ok().build();
    unlabeled.metadata.labels = None;
    assert!(slice_info(&unlabeled, IpFamily::V4, "n").is_none());
    let mut other_proxy = ok().build();
    other_proxy.metadata.labels.as_mut().unwrap().insert(SERVICE_PROXY_NAME_LABEL.into(), "x".into());
    assert!(slice_info(&other_proxy, IpFamily::V4, "n").is_none());
    let mut no_port = ok().build();
    no_port.ports.as_mut().unwrap()[0].port = None;
    assert!(slice_info(&no_port, IpFamily::V4, "n").unwrap().endpoints.is_empty());
}

#[test]
fn merging_prefers_the_non_terminating_then_the_local_copy() {
    let a = slice("ns", "svc", "a", "IPv4")
        .port("p", 80, "TCP")
        .endpoint("10.0.0.1", "node-b", EndpointState::ServingTerminating)
        .endpoint("10.0.0.2", "node-b", EndpointState::Ready)
        .build();
    let b = slice("ns", "svc", "b", "IPv4")
        .port("p", 80, "TCP")
        .endpoint("10.0.0.1", "node-b", EndpointState::Ready)
        .endpoint("10.0.0.2", "node-a", EndpointState::Ready)
        .endpoint("10.0.0.0", "node-b", EndpointState::Ready)
        .build();
    let infos = [slice_info(&a, IpFamily::V4, "node-a").unwrap(), slice_info(&b, IpFamily::V4, "node-a").unwrap()];
    for order in [[0, 1], [1, 0]] {
        let merged = merge_slices(order.iter().map(|i| &infos[*i]));
        let eps = &merged[&ServicePortName::new("ns", "svc", "p", Protocol::Tcp)];
        let got: Vec<(String, bool, bool)> = eps.iter().map(|e| (e.ip.to_string(), e.terminating, e.is_local)).collect();
        assert_eq!(
            got,
            vec![("10.0.0.0".into(), false, false), ("10.0.0.1".into(), false, false), ("10.0.0.2".into(), false, true)],
            "sorted, deduplicated, same result in any order"
        );
    }
}

#[test]
fn node_info_reads_addresses_labels_and_cidrs() {
    let node = kproxy_oracle::fixtures::node();
    let info = node_info(&node);
    assert_eq!(info.name, "node-a");
    assert_eq!(info.zone(), "zone-a");
    assert_eq!(info.ips.len(), 2);
    assert_eq!(info.pod_cidrs.len(), 2);
}
