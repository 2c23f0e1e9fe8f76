//! Rule generation: the desired state in, typed rules out.
//!
//! [`Renderer`] keeps what each service port contributed
//! ([`ServiceRules`]), so a sync re-renders only the Services that changed
//! and journals each changed port's previous rules: the restore step can
//! then rewrite just those ports' chains and swap just their rules in the
//! shared chains. [`Renderer::ruleset`] is the whole desired state, for
//! full syncs, the fake kernel and the tracer.

mod fixed;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use kproxy_core::{NamespacedName, NoLocalEndpoints, ProxierConfig, ProxyState, Protocol, ServicePortName};

use crate::rule::{Match, Rule};
pub use fixed::{fixed_chains, jumps, jumps_for, FixedOptions, Jump, Table};
pub use service::{local_match, node_port_destinations, render_port, ServiceRules};

/// Every chain of one table, in name order, with its rules.
pub type Chains = BTreeMap<String, Vec<Rule>>;

/// The whole desired ruleset of one family.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ruleset {
    /// The nat table's kproxy chains.
    pub nat: Chains,
    /// The filter table's kproxy chains.
    pub filter: Chains,
}

impl Ruleset {
    /// One table's chains.
    pub fn table(&self, table: Table) -> &Chains {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }
}

/// Which shared chain a port's rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// nat `KUBE-SERVICES`.
    NatServices,
    /// nat `KUBE-NODEPORTS`.
    NatNodePorts,
    /// filter `KUBE-SERVICES`.
    FilterServices,
    /// filter `KUBE-EXTERNAL-SERVICES`.
    FilterExternal,
    /// filter `KUBE-PROXY-FIREWALL`.
    FilterFirewall,
    /// filter `KUBE-NODEPORTS`.
    FilterNodePorts,
}

impl Shared {
    /// Every shared chain.
    pub const ALL: [Shared; 6] =
        [Shared::NatServices, Shared::NatNodePorts, Shared::FilterServices, Shared::FilterExternal, Shared::FilterFirewall, Shared::FilterNodePorts];

    /// The table and chain.
    pub fn chain(self) -> (Table, &'static str) {
        use crate::names::*;
        match self {
            Shared::NatServices => (Table::Nat, SERVICES),
            Shared::NatNodePorts => (Table::Nat, NODEPORTS),
            Shared::FilterServices => (Table::Filter, SERVICES),
            Shared::FilterExternal => (Table::Filter, EXTERNAL_SERVICES),
            Shared::FilterFirewall => (Table::Filter, PROXY_FIREWALL),
            Shared::FilterNodePorts => (Table::Filter, NODEPORTS),
        }
    }

    /// This chain's rules in `r`.
    pub fn rules(self, r: &ServiceRules) -> &[Rule] {
        match self {
            Shared::NatServices => &r.nat_services,
            Shared::NatNodePorts => &r.nat_nodeports,
            Shared::FilterServices => &r.filter_services,
            Shared::FilterExternal => &r.filter_external,
            Shared::FilterFirewall => &r.filter_firewall,
            Shared::FilterNodePorts => &r.filter_nodeports,
        }
    }
}

/// Ports changed since the journal was last taken, with what each
/// contributed before the first of those changes (None: it was new).
#[derive(Debug, Default)]
pub struct Journal {
    /// Whether everything was re-rendered (a partial restore cannot be
    /// trusted; write everything).
    pub full: bool,
    /// The previous rules of each changed port.
    pub previous: BTreeMap<ServicePortName, Option<ServiceRules>>,
}

/// The incremental renderer.
#[derive(Debug)]
pub struct Renderer {
    config: ProxierConfig,
    options: FixedOptions,
    /// The fixed chains (nat, filter) for this configuration.
    fixed: (Chains, Chains),
    ports: BTreeMap<ServicePortName, ServiceRules>,
    journal: Journal,
}

impl Renderer {
    /// A renderer that has rendered the applied state of `state`, with
    /// nothing journaled.
    pub fn of(state: &ProxyState, config: &ProxierConfig) -> Self {
        let mut r = Renderer::new(config.clone());
        r.refresh_all(state);
        r.journal = Journal::default();
        r
    }

    /// A renderer with no services.
    pub fn new(config: ProxierConfig) -> Self {
        let options = FixedOptions::default();
        let fixed = fixed_chains(&config, options);
        Renderer { config, options, fixed, ports: BTreeMap::new(), journal: Journal::default() }
    }

    /// Renders the fixed chains with `options` (localhost NodePorts only
    /// ever for IPv4).
    pub fn with_options(mut self, mut options: FixedOptions) -> Self {
        options.localhost_node_ports &= self.config.family == kproxy_core::IpFamily::V4;
        self.options = options;
        self.fixed = fixed_chains(&self.config, options);
        self
    }

    /// Whether localhost NodePorts are on.
    pub fn localhost_node_ports(&self) -> bool {
        self.options.localhost_node_ports
    }

    /// The configuration rules are rendered for.
    pub fn config(&self) -> &ProxierConfig {
        &self.config
    }

    /// Every port's contribution.
    pub fn ports(&self) -> &BTreeMap<ServicePortName, ServiceRules> {
        &self.ports
    }

    /// Re-renders every Service; the journal is marked full.
    pub fn refresh_all(&mut self, state: &ProxyState) {
        self.journal.full = true;
        let mut services: BTreeSet<NamespacedName> = self.ports.keys().map(|n| n.service.clone()).collect();
        services.extend(state.services().iter().map(|(n, _)| n.service.clone()));
        self.refresh(state, services.iter());
    }

    /// Re-renders the given Services.
    pub fn refresh<'a>(&mut self, state: &ProxyState, services: impl IntoIterator<Item = &'a NamespacedName>) {
        for service in services {
            let first = ServicePortName { service: service.clone(), port: String::new(), protocol: Protocol::Tcp };
            let old: Vec<ServicePortName> =
                self.ports.range((Bound::Included(first), Bound::Unbounded)).take_while(|(n, _)| &n.service == service).map(|(n, _)| n.clone()).collect();
            let mut now: BTreeMap<ServicePortName, ServiceRules> = BTreeMap::new();
            let mut health_check_written = false;
            for (name, info) in state.services().ports_of(service) {
                let mut rules = render_port(name, info, state.endpoints().get(name), state.node(), &self.config);
                if self.options.localhost_node_ports && self.options.nfacct {
                    count_localhost_node_ports(&mut rules.nat_nodeports);
                }
                // One health-check rule per Service, however many ports.
                if health_check_written {
                    rules.filter_nodeports.clear();
                }
                health_check_written |= !rules.filter_nodeports.is_empty();
                now.insert(name.clone(), rules);
            }
            for name in old.iter().filter(|n| !now.contains_key(*n)) {
                let before = self.ports.remove(name);
                self.journal.previous.entry(name.clone()).or_insert(before);
            }
            for (name, rules) in now {
                if self.ports.get(&name) == Some(&rules) {
                    continue;
                }
                let before = self.ports.insert(name.clone(), rules);
                self.journal.previous.entry(name).or_insert(before);
            }
        }
        // Ports that changed and changed back need no work.
        let ports = &self.ports;
        self.journal.previous.retain(|name, before| before.as_ref() != ports.get(name));
    }

    /// Takes the changes made since the last call.
    pub fn take_journal(&mut self) -> Journal {
        std::mem::take(&mut self.journal)
    }

    /// Ports whose Local policy found no local endpoint, for metrics.
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        NoLocalEndpoints {
            internal: self.ports.values().filter(|r| r.no_local_internal).count(),
            external: self.ports.values().filter(|r| r.no_local_external).count(),
        }
    }

    /// The whole desired ruleset: the fixed chains with every port's
    /// shared-chain rules in place, and every port's own chains.
    pub fn ruleset(&self) -> Ruleset {
        let owned = |table| self.chains_of(table).into_iter().map(|(n, rules)| (n.to_string(), rules.into_iter().cloned().collect())).collect();
        Ruleset { nat: owned(Table::Nat), filter: owned(Table::Filter) }
    }
}

impl Renderer {
    /// Every kproxy chain the desired ruleset has, with its rule count,
    /// per table: what a drift check compares `iptables-save` with. Cheaper
    /// than [`Renderer::ruleset`]: no rule is copied.
    pub fn outline(&self) -> BTreeMap<Table, BTreeMap<String, usize>> {
        let mut out: BTreeMap<Table, BTreeMap<String, usize>> = BTreeMap::new();
        for (table, chains) in [(Table::Nat, &self.fixed.0), (Table::Filter, &self.fixed.1)] {
            out.insert(table, chains.iter().map(|(n, r)| (n.clone(), r.len())).collect());
        }
        for r in self.ports.values() {
            for shared in Shared::ALL {
                let (table, chain) = shared.chain();
                *out.get_mut(&table).and_then(|t| t.get_mut(chain)).expect("shared chains are fixed") += shared.rules(r).len();
            }
            for (name, rules) in &r.chains {
                out.get_mut(&Table::Nat).expect("nat").insert(name.clone(), rules.len());
            }
        }
        out
    }
}

/// Before each NodePort jump, upstream's counting copy for loopback
/// destinations: `-d 127.0.0.0/8 ... -m nfacct --nfacct-name
/// localhost_nps_accepted_pkts` with the same jump.
fn count_localhost_node_ports(rules: &mut Vec<Rule>) {
    let mut out = Vec::with_capacity(rules.len() * 2);
    for rule in rules.drain(..) {
        let mut counting = rule.clone();
        let at = counting.matches.iter().position(|m| matches!(m, Match::DestinationPort(_))).unwrap_or(counting.matches.len());
        counting.matches.insert(at, Match::Destination("127.0.0.0/8".parse().expect("literal"), false));
        counting.matches.push(Match::Nfacct(crate::names::NFACCT_LOCALHOST_NODEPORTS.into()));
        out.push(counting);
        out.push(rule);
    }
    *rules = out;
}

impl Renderer {
    /// How many rules the desired ruleset has per table, without building
    /// anything.
    pub fn rule_totals(&self) -> BTreeMap<Table, usize> {
        let mut out: BTreeMap<Table, usize> = BTreeMap::new();
        for (table, chains) in [(Table::Nat, &self.fixed.0), (Table::Filter, &self.fixed.1)] {
            *out.entry(table).or_default() += chains.values().map(Vec::len).sum::<usize>();
        }
        for r in self.ports.values() {
            for shared in Shared::ALL {
                *out.entry(shared.chain().0).or_default() += shared.rules(r).len();
            }
            *out.entry(Table::Nat).or_default() += r.chains.iter().map(|(_, rules)| rules.len()).sum::<usize>();
        }
        out
    }
}

impl Renderer {
    /// One table's chains as [`Renderer::ruleset`] has them, by reference:
    /// what a full restore writes, without copying a rule.
    pub fn chains_of(&self, table: Table) -> BTreeMap<&str, Vec<&Rule>> {
        let fixed = match table {
            Table::Nat => &self.fixed.0,
            Table::Filter => &self.fixed.1,
        };
        let mut out: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
        for (name, tail) in fixed {
            let shared = Shared::ALL.into_iter().find(|s| s.chain() == (table, name.as_str()));
            let mut rules: Vec<&Rule> = match shared {
                Some(shared) => self.ports.values().flat_map(|r| shared.rules(r)).collect(),
                None => Vec::new(),
            };
            rules.extend(tail);
            out.insert(name, rules);
        }
        if table == Table::Nat {
            for r in self.ports.values() {
                for (name, rules) in &r.chains {
                    out.insert(name, rules.iter().collect());
                }
            }
        }
        out
    }
}

/// Renders the applied state of `state` for `config` (pure: the same input
/// always gives the same ruleset).
pub fn render(state: &ProxyState, config: &ProxierConfig) -> Ruleset {
    Renderer::of(state, config).ruleset()
}
