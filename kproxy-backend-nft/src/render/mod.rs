//! Rule generation: the desired state in, a typed [`Ruleset`] out.
//!
//! [`render`] is the pure, whole-state function. [`Renderer`] produces the
//! same ruleset incrementally: it remembers what each service port
//! contributed, so re-rendering one changed Service touches only its own
//! elements, and it journals the element changes so a sync can send them
//! without comparing whole rulesets.

mod chains;
mod contribution;
mod journal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use ipnet::IpNet;

use kproxy_core::{select_endpoints, NamespacedName, NoLocalEndpoints, ProxierConfig, ProxyState, Protocol, ServicePortName};

use crate::model::{Key, Ruleset, Set, Value};
use contribution::{contribute, fixed_decl, Claims, SetId, SlotKind, Stored, FIXED_SETS};
pub use journal::{Journal, Structure};

/// What [`render`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The ruleset.
    pub ruleset: Ruleset,
    /// Ports whose Local policy found no local endpoint, for metrics.
    pub no_local_endpoints: NoLocalEndpoints,
}

/// Renders the applied state of `state` for `config` into a ruleset.
///
/// Pure and deterministic: the same input always gives the same ruleset.
pub fn render(state: &ProxyState, config: &ProxierConfig) -> Rendered {
    let mut r = Renderer::new(config.clone());
    r.refresh_all(state);
    Rendered {
        ruleset: r.ruleset.clone(),
        no_local_endpoints: r.no_local_endpoints(),
    }
}

/// The incremental renderer.
#[derive(Debug)]
pub struct Renderer {
    config: ProxierConfig,
    ruleset: Ruleset,
    refcounts: HashMap<(SetId, Key), u32>,
    /// What each service port contributed, sorted so one Service's ports
    /// are a range.
    contributions: BTreeMap<ServicePortName, Stored>,
    /// Running totals behind [`Renderer::no_local_endpoints`].
    no_local: NoLocalEndpoints,
    claims: Claims,
    /// Service ports that lost a claim, by destination: re-rendered when
    /// its owner lets it go. (Rare: a copy of these names costs little.)
    waiting: HashMap<Key, BTreeMap<u64, ServicePortName>>,
    /// Elements per slot map, to know which `numgen` rules are needed.
    slot_maps: BTreeMap<(SlotKind, Protocol, usize), usize>,
    /// Slot maps in the order they first appeared: rules for new sizes are
    /// appended, so existing rules never move.
    slot_order: Vec<(SlotKind, Protocol, usize)>,
    /// Elements per affinity timeout and protocol.
    affinity: BTreeMap<u32, BTreeMap<Protocol, usize>>,
    /// This family's ServiceCIDRs, as of the last refresh.
    service_cidrs: Vec<IpNet>,
    journal: Journal,
}

impl Renderer {
    /// A renderer with no services yet (fixed chains and sets only).
    pub fn new(config: ProxierConfig) -> Self {
        let mut ruleset = Ruleset::new(config.family);
        for name in FIXED_SETS {
            ruleset.sets.insert(name.to_string(), Set::new(fixed_decl(name)));
        }
        let nodeport_ips = &mut ruleset.sets.get_mut(crate::names::NODEPORT_IPS).expect("fixed set").elements;
        for &ip in config.node_port_ips.iter().filter(|ip| config.family.contains(**ip)) {
            nodeport_ips.insert(Key::Addr(ip), None);
        }
        let mut r = Renderer {
            config,
            ruleset,
            refcounts: HashMap::new(),
            contributions: BTreeMap::new(),
            no_local: NoLocalEndpoints::default(),
            claims: Claims::new(),
            waiting: HashMap::new(),
            slot_maps: BTreeMap::new(),
            slot_order: Vec::new(),
            affinity: BTreeMap::new(),
            service_cidrs: Vec::new(),
            journal: Journal::default(),
        };
        r.rebuild_chains();
        r.journal = Journal::default();
        r
    }

    /// The current ruleset.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Ports whose Local policy found no local endpoint, for metrics.
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        self.no_local
    }

    /// Re-renders every service (after a node change, or from scratch). The
    /// journal is marked full: a caller must rebuild, not patch.
    pub fn refresh_all(&mut self, state: &ProxyState) {
        self.journal.mark_full();
        let mut services: BTreeSet<NamespacedName> = self.contributions.keys().map(|n| n.service.clone()).collect();
        services.extend(state.services().iter().map(|(n, _)| n.service.clone()));
        self.refresh(state, services.iter());
    }

    /// Re-renders the given services: takes back what their ports
    /// contributed and adds what they contribute now. Services whose
    /// claim on a shared destination changed hands on the way (released
    /// by, or taken by, one of these) are re-rendered too.
    pub fn refresh<'a>(&mut self, state: &ProxyState, services: impl IntoIterator<Item = &'a NamespacedName>) {
        let first: BTreeSet<&NamespacedName> = services.into_iter().collect();
        let mut next = self.round(state, &first);
        // Each round moves a destination to a claimant with a smaller
        // fingerprint or hands a released one on, so rounds end; the bound
        // is a guard, not a limit ever met.
        for _ in 0..=self.contributions.len() {
            if next.is_empty() {
                break;
            }
            let pending = std::mem::take(&mut next);
            next = self.round(state, &pending.iter().collect());
        }
        self.service_cidrs = state.service_cidrs().to_vec();
        self.rebuild_chains();
    }

    /// Re-renders `pending` once; returns the services whose claims
    /// changed hands on the way, to re-render next.
    fn round(&mut self, state: &ProxyState, pending: &BTreeSet<&NamespacedName>) -> BTreeSet<NamespacedName> {
        let mut next = BTreeSet::new();
        let mut released = Vec::new();
        for &service in pending {
            for name in self.ports_of(service) {
                self.withdraw(&name, &mut released);
            }
        }
        for &service in pending {
            for (name, svc) in state.services().ports_of(service) {
                let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
                let c = contribute(name, svc, &selected, &self.config, &mut self.claims);
                for &(key, owner) in &c.taken {
                    // The previous owner goes before this port's elements
                    // land on the same keys.
                    if let Some(loser) = self.owner_port(key, owner) {
                        self.withdraw(&loser, &mut released);
                        next.insert(loser.service);
                    }
                }
                for (set, key, value) in &c.elements {
                    self.insert(*set, *key, *value);
                }
                let me = contribution::fingerprint(name);
                for key in &c.lost {
                    self.waiting.entry(*key).or_default().insert(me, name.clone());
                }
                self.no_local.internal += usize::from(c.no_local_internal);
                self.no_local.external += usize::from(c.no_local_external);
                self.contributions.insert(name.clone(), c.stored());
            }
        }
        // A released destination goes to its best waiting claimant,
        // unless a better one took it again in this round.
        for key in released {
            let Some((&best, name)) = self.waiting.get(&key).and_then(|w| w.first_key_value()) else { continue };
            if self.claims.get(&key).is_none_or(|&owner| best < owner) {
                next.insert(name.service.clone());
            }
        }
        next
    }

    /// The ports this renderer holds for `service`.
    fn ports_of(&self, service: &NamespacedName) -> Vec<ServicePortName> {
        let first = ServicePortName { service: service.clone(), port: String::new(), protocol: Protocol::Tcp };
        self.contributions
            .range((Bound::Included(first), Bound::Unbounded))
            .take_while(|(n, _)| &n.service == service)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The port with fingerprint `owner` that holds `key` (a rare search:
    /// only when a claim changes hands).
    fn owner_port(&self, key: Key, owner: u64) -> Option<ServicePortName> {
        self.contributions
            .iter()
            .find(|(n, c)| c.claims.contains(&key) && contribution::fingerprint(n) == owner)
            .map(|(n, _)| n.clone())
    }

    /// Takes the element and structure changes made since the last call.
    pub fn take_journal(&mut self) -> Journal {
        std::mem::take(&mut self.journal)
    }

    /// Takes back what `name` contributed; the destinations it owned are
    /// added to `released`.
    fn withdraw(&mut self, name: &ServicePortName, released: &mut Vec<Key>) {
        let Some(c) = self.contributions.remove(name) else { return };
        self.no_local.internal -= usize::from(c.no_local_internal);
        self.no_local.external -= usize::from(c.no_local_external);
        for (set, key) in c.all_keys() {
            self.remove(set, &key);
        }
        let me = contribution::fingerprint(name);
        if !self.waiting.is_empty() {
            // Rarely anything: only ports that lost a claim wait.
            self.waiting.retain(|_, w| {
                w.remove(&me);
                !w.is_empty()
            });
        }
        for key in &c.claims {
            if self.claims.get(key) == Some(&me) {
                self.claims.remove(key);
                released.push(*key);
            }
        }
    }

    fn insert(&mut self, set: SetId, key: Key, value: Option<Value>) {
        if set.shared() {
            let count = self.refcounts.entry((set, key)).or_insert(0);
            *count += 1;
            if *count > 1 {
                return;
            }
        }
        let name = set.name();
        let target = self.ruleset.sets.entry(name.clone()).or_insert_with(|| Set::new(set.decl()));
        let before = target.elements.insert(key, value);
        if before.is_none() {
            self.count(set, &key, 1);
        }
        self.journal.touched(&name, key, before);
    }

    /// Keeps the slot-map and affinity counters in step with the sets.
    fn count(&mut self, set: SetId, key: &Key, delta: isize) {
        // Slot-map counters that reach zero are kept, and so are their (now
        // empty) maps and rules: removing them would rewrite chains whose
        // rules reference large maps, which nft can only do by reading them.
        fn bump<K: Ord>(map: &mut BTreeMap<K, usize>, k: K, delta: isize) {
            let n = map.entry(k).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
        match (set, key) {
            (SetId::Slots(kind, p, n), _) => {
                if !self.slot_maps.contains_key(&(kind, p, n)) {
                    self.slot_order.push((kind, p, n));
                }
                bump(&mut self.slot_maps, (kind, p, n), delta)
            }
            (SetId::Affinity(t), Key::Service(_, p, _)) => {
                // Affinity rules only reference small sets: no need to keep
                // them once their last service is gone.
                let per = self.affinity.entry(t).or_default();
                bump(per, *p, delta);
                per.retain(|_, n| *n > 0);
                if per.is_empty() {
                    self.affinity.remove(&t);
                }
            }
            _ => {}
        }
    }

    fn remove(&mut self, set: SetId, key: &Key) {
        if set.shared() {
            match self.refcounts.get_mut(&(set, *key)) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    return;
                }
                _ => {
                    self.refcounts.remove(&(set, *key));
                }
            }
        }
        let name = set.name();
        let Some(target) = self.ruleset.sets.get_mut(&name) else { return };
        let Some(before) = target.elements.remove(key) else { return };
        self.journal.touched(&name, *key, Some(before));
        self.count(set, key, -1);
    }

    /// Recomputes the fixed chains from which slot maps and affinity sets
    /// exist; they change only when an endpoint count or a timeout appears
    /// or disappears.
    fn rebuild_chains(&mut self) {
        let mut slot_sizes: BTreeMap<SlotKind, Vec<(Protocol, usize)>> = BTreeMap::new();
        for &(kind, p, n) in &self.slot_order {
            slot_sizes.entry(kind).or_default().push((p, n));
        }
        let affinity: BTreeMap<u32, Vec<Protocol>> =
            self.affinity.iter().map(|(t, per)| (*t, per.keys().copied().collect())).collect();
        let chains = chains::chains(&chains::ChainInputs {
            config: &self.config,
            slot_sizes,
            affinity,
            service_cidrs: &self.service_cidrs,
        });
        self.ruleset.chains = chains;
    }
}
