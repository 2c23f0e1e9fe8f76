//! ipsets over netlink against a real kernel in a private network
//! namespace, checked with the `ipset` tool: every set type IPVS mode uses
//! is created as `ipset` creates it and holds what was added; a long add
//! spans several messages; `-exist` and its absence behave as in `ipset
//! restore`; a refused add names its element and keeps the swap after it
//! from running; a set `ipset` made (a node taken over from kube-proxy) is
//! swapped with one made here. Needs root (skips without, must run in CI).

use std::collections::BTreeSet;
use std::net::IpAddr;

use kproxy_core::{IpFamily, Protocol};
use kproxy_netfilter::ipset::{Command, Entry, SetType};
use kproxy_netfilter::Ipset;
use kproxy_testkit::{kernel_tests_enabled, Netns};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn create(name: &str, kind: SetType, family: IpFamily) -> Command {
    Command::Create { name: name.into(), kind, family }
}

fn add(name: &str, entries: Vec<Entry>, exist: bool) -> Command {
    Command::Add { name: name.into(), entries, exist }
}

/// The entries of set `name` as `ipset save` shows them.
fn saved(ns: &Netns, name: &str, kind: SetType) -> BTreeSet<Entry> {
    let text = ns.exec(&["ipset", "save", name]).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("add {name} ")))
        .map(|e| Entry::parse(kind.name(), e).unwrap_or_else(|| panic!("ipset printed {e:?}")))
        .collect()
}

/// `ipset save`'s create line and `ipset list`'s revision for `name`,
/// with the name and the hash's random seed (`initval`) taken out.
fn header(ns: &Netns, name: &str) -> (String, String) {
    let save = ns.exec(&["ipset", "save", name]).unwrap();
    let create = save.lines().next().unwrap_or_default().replacen(name, "NAME", 1);
    let create = create.split(" initval ").next().unwrap_or_default().to_string();
    let list = ns.exec(&["ipset", "list", "-t", name]).unwrap();
    let revision = list.lines().find(|l| l.starts_with("Revision:")).unwrap_or_default().to_string();
    (create, revision)
}

#[test]
fn sets_are_made_filled_swapped_and_destroyed_as_ipset_restore_would() {
    if !kernel_tests_enabled("sets_are_made_filled_swapped_and_destroyed_as_ipset_restore_would") {
        return;
    }
    let ns = Netns::new("ipset").unwrap();
    let mut ipset = Ipset::open_in_netns(ns.name()).unwrap();
    let (a, b) = (ip("172.30.0.1"), ip("10.0.0.7"));
    let (a6, b6) = (ip("fd00::1"), ip("fd00:1::7"));
    let examples: Vec<(SetType, IpFamily, Vec<Entry>)> = vec![
        (SetType::HashIp, IpFamily::V4, vec![Entry::Ip(a)]),
        (SetType::HashIpPort, IpFamily::V4, vec![Entry::IpPort(a, Protocol::Tcp, 80), Entry::IpPort(a, Protocol::Sctp, 9)]),
        (SetType::HashIpPortIp, IpFamily::V4, vec![Entry::IpPortIp(a, Protocol::Udp, 53, b)]),
        (SetType::HashIpPortNet, IpFamily::V4, vec![Entry::IpPortNet(a, Protocol::Tcp, 443, "10.0.0.0/8".parse().unwrap())]),
        (SetType::BitmapPort, IpFamily::V4, vec![Entry::Port(30001), Entry::Port(65535), Entry::Port(0)]),
        (SetType::HashIp, IpFamily::V6, vec![Entry::Ip(a6)]),
        (SetType::HashIpPort, IpFamily::V6, vec![Entry::IpPort(a6, Protocol::Udp, 53)]),
        (SetType::HashIpPortIp, IpFamily::V6, vec![Entry::IpPortIp(a6, Protocol::Tcp, 80, b6)]),
        (SetType::HashIpPortNet, IpFamily::V6, vec![Entry::IpPortNet(a6, Protocol::Tcp, 80, "fd00:1::/64".parse().unwrap())]),
    ];
    for (n, (kind, family, entries)) in examples.iter().enumerate() {
        let ours = format!("OURS-{n}");
        let theirs = format!("THEIRS-{n}");
        ipset.apply(&[create(&ours, *kind, *family), add(&ours, entries.clone(), false)]).unwrap();
        let script = create(&theirs, *kind, *family).restore_text();
        ns.exec(&["sh", "-c", &format!("echo '{}' | ipset restore", script.trim())]).unwrap();
        assert_eq!(header(&ns, &ours), header(&ns, &theirs), "{} {family:?}: made as ipset makes it", kind.name());
        let want: BTreeSet<Entry> = entries.iter().cloned().collect();
        assert_eq!(saved(&ns, &ours, *kind), want, "{} {family:?}", kind.name());
        ipset.apply(&[create(&ours, *kind, *family)]).expect("creating an identical set again is fine");
        ipset.apply(&[Command::Swap(ours.clone(), theirs.clone())]).expect("a set ipset made swaps with one made here");
        assert_eq!(saved(&ns, &theirs, *kind), want, "swapped");
        assert!(saved(&ns, &ours, *kind).is_empty());
    }

    // A long add spans several messages and several sends (more than a
    // socket's default send buffer); deletes with and without -exist.
    let many: Vec<Entry> = (0..10_000u16).map(|i| Entry::IpPort(ip(&format!("10.1.{}.{}", i / 250, i % 250)), Protocol::Tcp, 1000 + i)).collect();
    ipset.apply(&[create("MANY", SetType::HashIpPort, IpFamily::V4), add("MANY", many.clone(), false)]).unwrap();
    assert_eq!(saved(&ns, "MANY", SetType::HashIpPort).len(), 10_000);
    let del = |entries: &[Entry], exist| Command::Del { name: "MANY".into(), entries: entries.to_vec(), exist };
    ipset.apply(&[del(&many[..1000], false), del(&many[..1500], true)]).expect("deleting absent elements with -exist is fine");
    assert_eq!(saved(&ns, "MANY", SetType::HashIpPort), many[1500..].iter().cloned().collect());
    let e = ipset.apply(&[del(&many[..1], false)]).unwrap_err().to_string();
    assert!(e.contains("delete from MANY 10.1.0.0,tcp:1000 refused"), "{e}");

    // An element already there: refused without -exist, naming it (the
    // 300th of one add, in its second message); fine with it.
    let again = many[1200..1600].to_vec();
    let e = ipset.apply(&[add("MANY", again.clone(), false)]).unwrap_err().to_string();
    assert!(e.contains(&format!("add to MANY {} refused: the element is already added", many[1500])), "{e}");
    ipset.apply(&[add("MANY", again, true)]).unwrap();
    assert_eq!(saved(&ns, "MANY", SetType::HashIpPort).len(), 8800);

    // A refused add keeps the swap after it from running: the set in use
    // is never replaced by one filled half-way.
    ipset.apply(&[create("LIVE", SetType::HashIp, IpFamily::V4), add("LIVE", vec![Entry::Ip(a)], false)]).unwrap();
    let e = ipset
        .apply(&[
            create("TMP", SetType::HashIp, IpFamily::V4),
            Command::Flush("TMP".into()),
            add("TMP", vec![Entry::Ip(b), Entry::Ip(a6)], false),
            Command::Swap("TMP".into(), "LIVE".into()),
        ])
        .unwrap_err()
        .to_string();
    assert!(e.contains("add to TMP fd00::1 refused"), "{e}");
    assert_eq!(saved(&ns, "LIVE", SetType::HashIp), [Entry::Ip(a)].into(), "LIVE untouched");

    // Other refusals, each in one line naming the command.
    let e = ipset.apply(&[create("LIVE", SetType::HashIpPort, IpFamily::V4)]).unwrap_err().to_string();
    assert!(e.contains("ipset create LIVE (hash:ip,port) refused: a set of this name already exists"), "{e}");
    let e = ipset.apply(&[Command::Swap("LIVE".into(), "MANY".into())]).unwrap_err().to_string();
    assert!(e.contains("swap LIVE with MANY refused: the two sets' types or families differ"), "{e}");
    let e = ipset.apply(&[Command::Flush("NONE".into())]).unwrap_err().to_string();
    assert!(e.contains("flush NONE refused: no such set"), "{e}");

    // Destroying: a missing set is fine; afterwards nothing is left.
    let mut all: Vec<Command> = ["LIVE", "TMP", "MANY", "NONE"].iter().map(|s| Command::Destroy(s.to_string())).collect();
    for n in 0..examples.len() {
        all.push(Command::Destroy(format!("OURS-{n}")));
        all.push(Command::Destroy(format!("THEIRS-{n}")));
    }
    ipset.apply(&all).unwrap();
    assert_eq!(ns.exec(&["ipset", "list", "-n"]).unwrap().trim(), "", "every set destroyed");
}
