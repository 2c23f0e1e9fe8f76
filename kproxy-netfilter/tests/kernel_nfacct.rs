//! Accounting objects against a real kernel, in a private network
//! namespace: a counter is created once (a second creation is fine), an
//! iptables rule with `-m nfacct` bumps it, and an unknown name reads as
//! absent. Needs root (skips without, must run in CI).

use kproxy_netfilter::Nfacct;
use kproxy_testkit::{kernel_tests_enabled, Netns};

#[test]
fn counters_are_created_once_and_count_the_rule_s_packets() {
    if !kernel_tests_enabled("counters_are_created_once_and_count_the_rule_s_packets") {
        return;
    }
    let ns = Netns::new("nfacct").unwrap();
    let mut acct = Nfacct::open_in_netns(ns.name()).unwrap();
    assert_eq!(acct.packets("kproxy_test_pkts").unwrap(), None, "no counter yet");
    acct.ensure("kproxy_test_pkts").unwrap();
    acct.ensure("kproxy_test_pkts").expect("a second creation is fine");
    assert_eq!(acct.packets("kproxy_test_pkts").unwrap(), Some(0));
    ns.exec(&["iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "nfacct", "--nfacct-name", "kproxy_test_pkts"]).unwrap();
    let send = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(3): s.sendto(b'x', ('127.0.0.1', 9))";
    ns.exec(&["python3", "-c", send]).unwrap();
    let counted = acct.packets("kproxy_test_pkts").unwrap().unwrap();
    assert_eq!(counted, 3, "three datagrams counted");
}
