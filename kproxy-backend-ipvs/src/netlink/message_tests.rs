//! Message bytes and reply parsing, without a kernel.

use super::*;
use kproxy_netfilter::wire::nested;

fn vs(protocol: Protocol, addr: &str, port: u16, scheduler: Scheduler, persistence: Option<u32>) -> VirtualServer {
    VirtualServer { key: VsKey { protocol, addr: addr.parse().unwrap(), port }, scheduler, persistence }
}

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer { key: RsKey { addr: addr.parse().unwrap(), port }, weight }
}

/// The nested attributes of type `kind` in a request.
fn inner(attrs: &[u8], kind: u16) -> Vec<(u16, Vec<u8>)> {
    let top = parse_attrs(attrs);
    parse_attrs(find(&top, kind).expect("nested attribute")).into_iter().map(|(k, v)| (k, v.to_vec())).collect()
}

fn ne32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

#[test]
fn a_new_ipv4_service_has_every_attribute_the_kernel_needs() {
    let r = op_request(&Op::AddService(vs(Protocol::Tcp, "10.96.0.1", 443, Scheduler::Wrr, Some(10800))));
    assert_eq!(r.cmd, CMD_NEW_SERVICE);
    assert_eq!(parse_attrs(&r.attrs).len(), 1, "one nested service");
    let mut addr = vec![10, 96, 0, 1];
    addr.resize(16, 0);
    let flags = [ne32(SVC_F_PERSISTENT), ne32(u32::MAX)].concat();
    assert_eq!(
        inner(&r.attrs, CMD_ATTR_SERVICE),
        vec![
            (SVC_ATTR_AF, 2u16.to_ne_bytes().to_vec()),
            (SVC_ATTR_PROTOCOL, 6u16.to_ne_bytes().to_vec()),
            (SVC_ATTR_ADDR, addr),
            (SVC_ATTR_PORT, vec![1, 187]),
            (SVC_ATTR_SCHED_NAME, b"wrr\0".to_vec()),
            (SVC_ATTR_FLAGS, flags),
            (SVC_ATTR_TIMEOUT, ne32(10800)),
            (SVC_ATTR_NETMASK, vec![0xff; 4]),
        ]
    );
    // The nested flag is set and every attribute is 4-byte aligned.
    assert_eq!(u16::from_ne_bytes([r.attrs[2], r.attrs[3]]), CMD_ATTR_SERVICE | 0x8000);
    assert_eq!(r.attrs.len() % 4, 0);
}

#[test]
fn an_ipv6_service_edit_sends_the_prefix_length_and_clears_persistence() {
    let r = op_request(&Op::EditService(vs(Protocol::Sctp, "fd00::a", 53, Scheduler::Mh, None)));
    assert_eq!(r.cmd, CMD_SET_SERVICE);
    let svc = inner(&r.attrs, CMD_ATTR_SERVICE);
    let get = |k| svc.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get(SVC_ATTR_AF), 10u16.to_ne_bytes());
    assert_eq!(get(SVC_ATTR_PROTOCOL), 132u16.to_ne_bytes());
    assert_eq!(get(SVC_ATTR_ADDR), "fd00::a".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(get(SVC_ATTR_FLAGS), [ne32(0x10), ne32(u32::MAX)].concat(), "persistence off, mh hashing ports (as upstream), under a full mask");
    assert_eq!(get(SVC_ATTR_TIMEOUT), ne32(0));
    assert_eq!(get(SVC_ATTR_NETMASK), ne32(128));
}

#[test]
fn dest_requests_name_the_service_and_the_masqueraded_real_server() {
    let key = VsKey { protocol: Protocol::Udp, addr: "10.96.0.10".parse().unwrap(), port: 53 };
    let r = op_request(&Op::AddDest(key, rs("10.1.0.7", 5353, 3)));
    assert_eq!(r.cmd, CMD_NEW_DEST);
    assert_eq!(inner(&r.attrs, CMD_ATTR_SERVICE).len(), 4, "the service key only");
    let mut addr = vec![10, 1, 0, 7];
    addr.resize(16, 0);
    assert_eq!(
        inner(&r.attrs, CMD_ATTR_DEST),
        vec![
            (DEST_ATTR_ADDR, addr.clone()),
            (DEST_ATTR_PORT, 5353u16.to_be_bytes().to_vec()),
            (DEST_ATTR_ADDR_FAMILY, 2u16.to_ne_bytes().to_vec()),
            (DEST_ATTR_FWD_METHOD, ne32(0)),
            (DEST_ATTR_WEIGHT, ne32(3)),
            (DEST_ATTR_U_THRESH, ne32(0)),
            (DEST_ATTR_L_THRESH, ne32(0)),
        ]
    );
    assert_eq!(op_request(&Op::EditDest(key, rs("10.1.0.7", 5353, 0))).cmd, CMD_SET_DEST);
    let del = op_request(&Op::DelDest(key, RsKey { addr: "10.1.0.7".parse().unwrap(), port: 5353 }));
    assert_eq!(del.cmd, CMD_DEL_DEST);
    assert_eq!(inner(&del.attrs, CMD_ATTR_DEST).len(), 3, "address, port, family");
    let svc = op_request(&Op::DelService(key));
    assert_eq!((svc.cmd, parse_attrs(&svc.attrs).len()), (CMD_DEL_SERVICE, 1));
    assert_eq!(dests_dump_attrs(&key), op_request(&Op::DelService(key)).attrs);
}

#[test]
fn config_and_flush_requests() {
    let r = set_config_request(Timeouts { tcp: 900, tcp_fin: 120, udp: 0 });
    assert_eq!(r.cmd, CMD_SET_CONFIG);
    let attrs = parse_attrs(&r.attrs);
    assert_eq!(parse_timeouts(&attrs), Timeouts { tcp: 900, tcp_fin: 120, udp: 0 });
    assert_eq!(flush_request(), GenlRequest { cmd: CMD_FLUSH, attrs: vec![] });
}

/// A GET_SERVICE reply as the kernel writes it: the request's attributes
/// plus the hashed flag, a NUL-terminated scheduler, statistics.
fn kernel_service(v: &VirtualServer) -> Vec<u8> {
    let mut out = Vec::new();
    nested(&mut out, CMD_ATTR_SERVICE, |b| {
        service_key_attrs(b, &v.key);
        attr(b, SVC_ATTR_SCHED_NAME, &cstr(v.scheduler.name()));
        let flags = 0x2 | if v.persistence.is_some() { SVC_F_PERSISTENT } else { 0 };
        attr(b, SVC_ATTR_FLAGS, &[ne32(flags), ne32(u32::MAX)].concat());
        attr(b, SVC_ATTR_TIMEOUT, &ne32(v.persistence.unwrap_or(0)));
        attr(b, SVC_ATTR_NETMASK, &[0xff; 4]);
        nested(b, 10, |b| attr(b, 1, &ne32(5)));
    });
    out
}

#[test]
fn every_kind_of_service_parses_back() {
    for scheduler in Scheduler::ALL {
        for protocol in Protocol::ALL {
            for (addr, persistence) in [("10.96.3.4", None), ("2001:db8::7", Some(10800))] {
                let v = vs(protocol, addr, 8080, scheduler, persistence);
                assert_eq!(parse_service(&parse_attrs(&kernel_service(&v))), Ok(v));
                let mut mine = Vec::new();
                nested(&mut mine, CMD_ATTR_SERVICE, |b| service_attrs(b, &v));
                assert_eq!(parse_service(&parse_attrs(&mine)), Ok(v));
            }
        }
    }
}

#[test]
fn services_outside_the_model_are_skipped_with_a_reason() {
    let mut fwmark = Vec::new();
    nested(&mut fwmark, CMD_ATTR_SERVICE, |b| {
        attr(b, SVC_ATTR_AF, &2u16.to_ne_bytes());
        attr(b, SVC_ATTR_FWMARK, &ne32(7));
        attr(b, SVC_ATTR_SCHED_NAME, &cstr("rr"));
    });
    assert_eq!(parse_service(&parse_attrs(&fwmark)), Err("fwmark service 7".into()));
    let key = VsKey { protocol: Protocol::Tcp, addr: "10.0.0.1".parse().unwrap(), port: 80 };
    let with = |sched: &str, proto: u16| {
        let mut out = Vec::new();
        nested(&mut out, CMD_ATTR_SERVICE, |b| {
            attr(b, SVC_ATTR_AF, &2u16.to_ne_bytes());
            attr(b, SVC_ATTR_PROTOCOL, &proto.to_ne_bytes());
            attr(b, SVC_ATTR_ADDR, &inet_addr(key.addr));
            attr(b, SVC_ATTR_PORT, &80u16.to_be_bytes());
            attr(b, SVC_ATTR_SCHED_NAME, &cstr(sched));
            attr(b, SVC_ATTR_FLAGS, &[0; 8]);
        });
        parse_service(&parse_attrs(&out))
    };
    assert_eq!(with("rr", 6).map(|v| v.key), Ok(key));
    assert!(with("none", 6).unwrap_err().contains("scheduler \"none\""));
    assert!(with("fo", 6).unwrap_err().contains("TCP 10.0.0.1:80"));
    assert_eq!(with("rr", 33), Err("protocol 33".into()));
}

#[test]
fn real_servers_parse_with_or_without_their_own_family() {
    let key = VsKey { protocol: Protocol::Tcp, addr: "fd00::1".parse().unwrap(), port: 80 };
    let reply = |family: Option<u16>, addr: IpAddr| {
        let mut out = Vec::new();
        nested(&mut out, CMD_ATTR_DEST, |b| {
            attr(b, DEST_ATTR_ADDR, &inet_addr(addr));
            attr(b, DEST_ATTR_PORT, &8080u16.to_be_bytes());
            attr(b, DEST_ATTR_FWD_METHOD, &ne32(0));
            attr(b, DEST_ATTR_WEIGHT, &ne32(2));
            attr(b, DEST_ATTR_ACTIVE_CONNS, &ne32(4));
            attr(b, DEST_ATTR_INACT_CONNS, &ne32(1));
            if let Some(f) = family {
                attr(b, DEST_ATTR_ADDR_FAMILY, &f.to_ne_bytes());
            }
        });
        out
    };
    let v6: IpAddr = "fd00::2".parse().unwrap();
    let got = parse_dest(&parse_attrs(&reply(None, v6)), &key).unwrap();
    assert_eq!(got, RealServerStatus { server: rs("fd00::2", 8080, 2), active: 4, inactive: 1 });
    assert_eq!(got.connections(), 5);
    let v4: IpAddr = "10.1.0.1".parse().unwrap();
    assert_eq!(parse_dest(&parse_attrs(&reply(Some(2), v4)), &key).unwrap().server, rs("10.1.0.1", 8080, 2));
    assert_eq!(parse_dest(&parse_attrs(&reply(Some(7), v4)), &key), Err("address family 7".into()));
}

#[test]
fn truncated_replies_are_skipped_without_panicking() {
    let key = VsKey { protocol: Protocol::Tcp, addr: "10.0.0.1".parse().unwrap(), port: 80 };
    let service = kernel_service(&vs(Protocol::Udp, "2001:db8::1", 53, Scheduler::Sh, Some(60)));
    let mut dest = Vec::new();
    nested(&mut dest, CMD_ATTR_DEST, |b| dest_attrs(b, &RsKey { addr: "2001:db8::2".parse().unwrap(), port: 53 }, Some(1)));
    for cut in 0..service.len().max(dest.len()) {
        let _ = parse_service(&parse_attrs(&service[..cut.min(service.len())]));
        let _ = parse_dest(&parse_attrs(&dest[..cut.min(dest.len())]), &key);
        let _ = parse_timeouts(&parse_attrs(&dest[..cut.min(dest.len())]));
        // Attribute payloads cut short, headers intact.
        for kind in 1..=12u16 {
            let mut short = Vec::new();
            nested(&mut short, CMD_ATTR_SERVICE, |b| attr(b, kind, &service[..cut.min(3)]));
            let _ = parse_service(&parse_attrs(&short));
        }
    }
    assert_eq!(parse_service(&[]), Err("no service".into()));
    assert_eq!(parse_timeouts(&[]), Timeouts::default());
}
