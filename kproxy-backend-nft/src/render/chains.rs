//! The fixed chains. Their rules depend only on the configuration and on
//! which slot sizes and affinity timeouts exist, never on a service's name.

use std::collections::BTreeMap;

use ipnet::IpNet;

use kproxy_core::{IpFamily, LocalDetector, ProxierConfig, Protocol};

use crate::model::{BaseChain, Chain, ChainType, Expr, Hook, Match, Rule, Stmt, Verdict};
use super::contribution::SlotKind;
use crate::names;

const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// The inputs that shape the chains.
pub(crate) struct ChainInputs<'a> {
    pub config: &'a ProxierConfig,
    /// (protocol, endpoint count) pairs present in each slot-map family, in
    /// the order their maps appeared.
    pub slot_sizes: BTreeMap<SlotKind, Vec<(Protocol, usize)>>,
    /// Affinity timeouts in use, with the protocols that use each.
    pub affinity: BTreeMap<u32, Vec<Protocol>>,
    /// This family's ServiceCIDRs.
    pub service_cidrs: &'a [IpNet],
}

fn base(kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        base: Some(BaseChain { kind, hook, priority }),
        rules,
    }
}

fn regular(rules: Vec<Rule>) -> Chain {
    Chain { base: None, rules }
}

fn jump(chain: &'static str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.into()))
}

fn goto(chain: &'static str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}

fn lookup(key: &[Expr], set: &str) -> Match {
    Match::Lookup {
        key: key.to_vec(),
        set: set.into(),
        negate: false,
    }
}

const DEST: [Expr; 3] = [Expr::Daddr, Expr::L4Proto, Expr::Dport];
const PORT: [Expr; 2] = [Expr::L4Proto, Expr::Dport];

/// The match that says "from one of this node's pods" (or, negated, "not"),
/// or `None` when the detector says nothing for this family.
pub(crate) fn local_traffic(detector: &LocalDetector, family: IpFamily, negate: bool) -> Option<Match> {
    match detector {
        LocalDetector::None => None,
        LocalDetector::ClusterCidr(nets) | LocalDetector::NodeCidr(nets) => {
            let nets: Vec<_> = nets.iter().copied().filter(|n| kproxy_core::IpFamily::of_net(n) == family).collect();
            (!nets.is_empty()).then_some(Match::SaddrIn { nets, negate })
        }
        LocalDetector::BridgeInterface(name) => Some(Match::Iifname {
            name: name.clone(),
            prefix: false,
            negate,
        }),
        LocalDetector::InterfaceNamePrefix(prefix) => Some(Match::Iifname {
            name: prefix.clone(),
            prefix: true,
            negate,
        }),
    }
}

/// Every chain of the ruleset.
pub(crate) fn chains(inputs: &ChainInputs<'_>) -> BTreeMap<String, Chain> {
    let config = inputs.config;
    let family = config.family;
    let mark = config.masquerade_mark();
    let mut c = BTreeMap::new();
    let mut put = |name: &str, chain: Chain| {
        c.insert(name.to_string(), chain);
    };

    // Entry points.
    let to_services = || vec![Rule::new(vec![], vec![jump(names::SERVICES)])];
    put(names::NAT_PREROUTING, base(ChainType::Nat, Hook::Prerouting, DSTNAT, to_services()));
    put(names::NAT_OUTPUT, base(ChainType::Nat, Hook::Output, DSTNAT, to_services()));
    let firewall = || vec![Rule::new(vec![Match::CtStateNew], vec![jump(names::FIREWALL_CHECK)])];
    put(names::FILTER_PREROUTING, base(ChainType::Filter, Hook::Prerouting, DSTNAT - 10, firewall()));
    put(names::FILTER_OUTPUT_FIREWALL, base(ChainType::Filter, Hook::Output, DSTNAT - 10, firewall()));
    let record = || vec![Rule::new(vec![Match::CtStateNew, Match::CtStatusDnat], vec![jump(names::AFFINITY_RECORD)])];
    put(names::AFFINITY_PREROUTING, base(ChainType::Filter, Hook::Prerouting, DSTNAT + 10, record()));
    put(names::AFFINITY_OUTPUT, base(ChainType::Filter, Hook::Output, DSTNAT + 10, record()));
    let check = || vec![Rule::new(vec![Match::CtStateNew], vec![jump(names::ENDPOINTS_CHECK)])];
    // Forwarded and locally sent traffic to an address of the ServiceCIDRs
    // that no Service holds (every Service address was DNATed or rejected
    // by now) is dropped rather than routed out of the node, as upstream's
    // `cluster-ips-check` does; never on input, as upstream.
    let check_cidrs = || {
        let mut rules = check();
        if !inputs.service_cidrs.is_empty() {
            let nets = inputs.service_cidrs.to_vec();
            rules.push(Rule::new(vec![Match::CtStateNew, Match::DaddrIn { nets }], vec![Stmt::Verdict(Verdict::Drop)]));
        }
        rules
    };
    put(names::FILTER_INPUT, base(ChainType::Filter, Hook::Input, FILTER, check()));
    put(names::FILTER_FORWARD, base(ChainType::Filter, Hook::Forward, FILTER, check_cidrs()));
    put(names::FILTER_OUTPUT, base(ChainType::Filter, Hook::Output, FILTER, check_cidrs()));
    put(
        names::NAT_POSTROUTING,
        base(
            ChainType::Nat,
            Hook::Postrouting,
            SRCNAT,
            vec![
                Rule::new(
                    vec![Match::CtStatusDnat, lookup(&[Expr::Saddr, Expr::Daddr], names::HAIRPIN)],
                    vec![jump(names::MARK_FOR_MASQUERADE)],
                ),
                Rule::new(vec![Match::MarkClear(mark)], vec![Stmt::Verdict(Verdict::Return)]),
                Rule::new(vec![], vec![Stmt::MarkXor(mark), Stmt::Masquerade]),
            ],
        ),
    );

    // Dispatch.
    let nodeport = || lookup(&[Expr::Daddr], names::NODEPORT_IPS);
    put(
        names::SERVICES,
        regular(vec![
            Rule::new(vec![lookup(&DEST, names::CLUSTER_IP_SERVICES)], vec![goto(names::CLUSTER_IP)]),
            Rule::new(vec![lookup(&DEST, names::CLUSTER_IP_LOCAL_SERVICES)], vec![goto(names::CLUSTER_IP_LOCAL)]),
            Rule::new(vec![lookup(&DEST, names::EXTERNAL_SERVICES)], vec![goto(names::EXTERNAL)]),
            Rule::new(vec![lookup(&DEST, names::EXTERNAL_LOCAL_SERVICES)], vec![goto(names::EXTERNAL_LOCAL)]),
            Rule::new(vec![nodeport(), lookup(&PORT, names::NODEPORT_SERVICES)], vec![goto(names::NODEPORT)]),
            Rule::new(vec![nodeport(), lookup(&PORT, names::NODEPORT_LOCAL_SERVICES)], vec![goto(names::NODEPORT_LOCAL)]),
        ]),
    );

    // Behaviour chains.
    let cluster_masq = if config.masquerade_all {
        vec![Rule::new(vec![], vec![jump(names::MARK_FOR_MASQUERADE)])]
    } else {
        local_traffic(&config.local_detector, family, true)
            .map(|not_local| vec![Rule::new(vec![not_local], vec![jump(names::MARK_FOR_MASQUERADE)])])
            .unwrap_or_default()
    };
    let with_tail = |mut rules: Vec<Rule>, tail: &'static str| {
        rules.push(Rule::new(vec![], vec![goto(tail)]));
        rules
    };
    put(names::CLUSTER_IP, regular(with_tail(cluster_masq.clone(), names::CLUSTER_LB)));
    put(names::CLUSTER_IP_LOCAL, regular(with_tail(cluster_masq, names::LOCAL_LB)));
    let always_masq = || vec![Rule::new(vec![], vec![jump(names::MARK_FOR_MASQUERADE)])];
    put(names::EXTERNAL, regular(with_tail(always_masq(), names::CLUSTER_LB)));
    put(names::NODEPORT, regular(with_tail(always_masq(), names::NODEPORT_CLUSTER_LB)));
    let local_policy = |cluster_lb: &'static str, local_lb: &'static str| {
        let mut rules = Vec::new();
        // Pods short-circuit to the cluster endpoints, as if they had gone
        // out to the load balancer and come back in.
        if let Some(from_pod) = local_traffic(&config.local_detector, family, false) {
            rules.push(Rule::new(vec![from_pod], vec![goto(cluster_lb)]));
        }
        // The node's own traffic too, masqueraded: its source is a local
        // address that the endpoint could not answer.
        rules.push(Rule::new(vec![Match::FibSaddrLocal], vec![jump(names::MARK_FOR_MASQUERADE)]));
        rules.push(Rule::new(vec![Match::FibSaddrLocal], vec![goto(cluster_lb)]));
        regular(with_tail(rules, local_lb))
    };
    put(names::EXTERNAL_LOCAL, local_policy(names::CLUSTER_LB, names::LOCAL_LB));
    put(names::NODEPORT_LOCAL, local_policy(names::NODEPORT_CLUSTER_LB, names::NODEPORT_LOCAL_LB));

    // Load balancing: affinity first, then one rule per endpoint count.
    let has_affinity = !inputs.affinity.is_empty();
    for kind in SlotKind::ALL {
        let key: &[Expr] = if kind.by_address() { &DEST } else { &PORT };
        let mut rules = Vec::new();
        if has_affinity {
            rules.push(Rule::new(
                vec![],
                vec![Stmt::DnatMap {
                    key: vec![Expr::Saddr, Expr::Daddr, Expr::L4Proto, Expr::Dport],
                    map: names::AFFINITY.into(),
                }],
            ));
        }
        for &(p, n) in inputs.slot_sizes.get(&kind).into_iter().flatten() {
            let mut k = key.to_vec();
            k.push(Expr::NumgenMod(n as u32));
            // The protocol match is what nft adds anyway for a map whose
            // port is typed `tcp dport`; writing it keeps the model exact.
            rules.push(Rule::new(vec![Match::L4Proto(p)], vec![Stmt::DnatMap { key: k, map: kind.map_name(p, n) }]));
        }
        put(kind.lb_chain(), regular(rules));
    }

    put(names::MARK_FOR_MASQUERADE, regular(vec![Rule::new(vec![], vec![Stmt::MarkOr(mark)])]));
    put(
        names::FIREWALL_CHECK,
        regular(vec![Rule::new(
            vec![
                lookup(&DEST, names::FIREWALL_SERVICES),
                Match::Lookup {
                    key: vec![Expr::Daddr, Expr::L4Proto, Expr::Dport, Expr::Saddr],
                    set: names::FIREWALL_ALLOW.into(),
                    negate: true,
                },
            ],
            vec![Stmt::Verdict(Verdict::Drop)],
        )]),
    );
    let original = [Expr::CtOriginalDaddr, Expr::L4Proto, Expr::CtOriginalProtoDst];
    let mut record_rules = Vec::new();
    for (&timeout, protocols) in &inputs.affinity {
        for &p in protocols {
            record_rules.push(Rule::new(
                vec![Match::L4Proto(p), lookup(&original, &names::affinity_services(timeout))],
                vec![Stmt::RecordTarget {
                    key: vec![Expr::Saddr, Expr::CtOriginalDaddr, Expr::L4Proto, Expr::CtOriginalProtoDst],
                    map: names::AFFINITY.into(),
                    timeout,
                }],
            ));
        }
    }
    put(names::AFFINITY_RECORD, regular(record_rules));
    let drop = || Stmt::Verdict(Verdict::Drop);
    let reject = || Stmt::Verdict(Verdict::Reject);
    put(
        names::ENDPOINTS_CHECK,
        regular(vec![
            Rule::new(vec![lookup(&DEST, names::NO_ENDPOINT_DROP)], vec![drop()]),
            Rule::new(vec![lookup(&DEST, names::NO_ENDPOINT_REJECT)], vec![reject()]),
            Rule::new(vec![nodeport(), lookup(&PORT, names::NODEPORT_NO_ENDPOINT_DROP)], vec![drop()]),
            Rule::new(vec![nodeport(), lookup(&PORT, names::NODEPORT_NO_ENDPOINT_REJECT)], vec![reject()]),
            // Any other port on a ClusterIP.
            Rule::new(vec![lookup(&[Expr::Daddr], names::CLUSTER_IPS)], vec![reject()]),
        ]),
    );
    c
}
