//! An in-memory nftables: applies a transaction atomically, checks every
//! reference the way the kernel would, and dumps what it holds.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use kproxy_core::IpFamily;

use crate::kernel::{Kernel, KernelError, Outline};
use crate::model::{Chain, Expr, Key, KeyShape, Match, Ruleset, Set, Stmt, Value, ValueShape, Verdict};
use crate::names;
use crate::text;
use crate::transaction::{Command, Op, Transaction};

/// The fake kernel.
#[derive(Debug, Default, Clone)]
pub struct FakeKernel {
    tables: BTreeMap<(IpFamily, String), Ruleset>,
    /// Every transaction applied successfully, in order.
    pub applied: Vec<Transaction>,
}

type Refusal = String;

impl FakeKernel {
    /// An empty fake.
    pub fn new() -> Self {
        FakeKernel::default()
    }

    /// The contents of one table.
    pub fn table(&self, family: IpFamily, name: &str) -> Option<&Ruleset> {
        self.tables.get(&(family, name.to_string()))
    }

    /// Every table, as `nft list ruleset` would print it (deterministic).
    pub fn dump(&self) -> String {
        self.tables.iter().map(|((_, name), rs)| text::table_block(name, rs)).collect()
    }

    /// Removes a table behind kproxy's back (to test drift repair).
    pub fn delete_table_externally(&mut self, family: IpFamily, name: &str) {
        self.tables.remove(&(family, name.to_string()));
    }

    /// Flushes a chain behind kproxy's back (to test drift repair).
    pub fn flush_chain_externally(&mut self, family: IpFamily, table: &str, chain: &str) {
        if let Some(c) = self.tables.get_mut(&(family, table.to_string())).and_then(|t| t.chains.get_mut(chain)) {
            c.rules.clear();
        }
    }

    fn apply_one(tables: &mut BTreeMap<(IpFamily, String), Ruleset>, family: IpFamily, cmd: &Command) -> Result<(), Refusal> {
        let key = (family, cmd.table.clone());
        if let Op::AddTable = cmd.op {
            tables.entry(key).or_insert_with(|| Ruleset::new(family));
            return Ok(());
        }
        if let Op::DeleteTable = cmd.op {
            return tables.remove(&key).map(|_| ()).ok_or_else(|| format!("delete table {}: no such table", cmd.table));
        }
        let rs = tables.get_mut(&key).ok_or_else(|| format!("{}: no such table", cmd.table))?;
        match &cmd.op {
            Op::AddTable | Op::DeleteTable => unreachable!("handled above"),
            Op::AddChain { name, base } => match rs.chains.get(name) {
                Some(c) if c.base != *base => Err(format!("add chain {name}: exists with another hook")),
                Some(_) => Ok(()),
                None => {
                    rs.chains.insert(name.clone(), Chain { base: *base, rules: Vec::new() });
                    Ok(())
                }
            },
            Op::FlushChain(name) => {
                rs.chains.get_mut(name).ok_or_else(|| format!("flush chain {name}: no such chain"))?.rules.clear();
                Ok(())
            }
            Op::DeleteChain(name) => {
                let chain = rs.chains.get(name).ok_or_else(|| format!("delete chain {name}: no such chain"))?;
                if !chain.rules.is_empty() {
                    return Err(format!("delete chain {name}: chain is not empty"));
                }
                if chain_referenced(rs, name) {
                    return Err(format!("delete chain {name}: still referenced"));
                }
                rs.chains.remove(name);
                Ok(())
            }
            Op::AddRule { chain, rule } => {
                check_rule(rs, rule).map_err(|e| format!("add rule {chain}: {e}"))?;
                rs.chains.get_mut(chain).ok_or_else(|| format!("add rule {chain}: no such chain"))?.rules.push(rule.clone());
                Ok(())
            }
            Op::AddSet { name, decl } => match rs.sets.get(name) {
                Some(s) if s.decl != *decl => Err(format!("add set {name}: exists with another type")),
                Some(_) => Ok(()),
                None => {
                    rs.sets.insert(name.clone(), Set::new(*decl));
                    Ok(())
                }
            },
            Op::DeleteSet { name, map } => {
                let set = rs.sets.get(name).ok_or_else(|| format!("delete set {name}: no such set"))?;
                if text::is_map(&set.decl) != *map {
                    return Err(format!("delete set {name}: wrong kind (set/map)"));
                }
                if set_referenced(rs, name) {
                    return Err(format!("delete set {name}: still referenced by a rule"));
                }
                rs.sets.remove(name);
                Ok(())
            }
            Op::AddElements { set, elements } => {
                let s = rs.sets.get_mut(set).ok_or_else(|| format!("add element {set}: no such set"))?;
                for (k, v) in elements {
                    check_element(&s.decl.key, s.decl.value, k, v).map_err(|e| format!("add element {set}: {e}"))?;
                    match s.elements.get(k) {
                        Some(existing) if existing != v => return Err(format!("add element {set}: {k:?} exists with another value")),
                        _ => {
                            s.elements.insert(*k, *v);
                        }
                    }
                }
                Ok(())
            }
            Op::DeleteElements { set, keys } => {
                let s = rs.sets.get_mut(set).ok_or_else(|| format!("delete element {set}: no such set"))?;
                for k in keys {
                    s.elements.remove(k).ok_or_else(|| format!("delete element {set}: {k:?} does not exist"))?;
                }
                Ok(())
            }
        }
    }
}

fn arity(shape: KeyShape) -> usize {
    match shape {
        KeyShape::Addr => 1,
        KeyShape::AddrPair | KeyShape::Port => 2,
        KeyShape::Service | KeyShape::PortSlot(..) => 3,
        KeyShape::ServiceSlot(..) | KeyShape::ServiceSource | KeyShape::Affinity => 4,
    }
}

fn key_fits(shape: &KeyShape, key: &Key) -> bool {
    matches!(
        (shape, key),
        (KeyShape::Addr, Key::Addr(_))
            | (KeyShape::AddrPair, Key::AddrPair(..))
            | (KeyShape::Service, Key::Service(..))
            | (KeyShape::Port, Key::Port(..))
            | (KeyShape::ServiceSource, Key::ServiceSource(..))
            | (KeyShape::Affinity, Key::Affinity(..))
    ) || matches!((shape, key), (KeyShape::ServiceSlot(p, n), Key::ServiceSlot(_, kp, _, i)) if i < n && p == kp)
        || matches!((shape, key), (KeyShape::PortSlot(p, n), Key::PortSlot(kp, _, i)) if i < n && p == kp)
}

fn check_element(shape: &KeyShape, value: ValueShape, k: &Key, v: &Option<Value>) -> Result<(), String> {
    if !key_fits(shape, k) {
        return Err(format!("key {k:?} does not fit {shape:?}"));
    }
    match (value, v) {
        (ValueShape::None, None) | (ValueShape::Target, Some(Value::Target(..))) => Ok(()),
        _ => Err(format!("value {v:?} does not fit {value:?}")),
    }
}

fn check_rule(rs: &Ruleset, rule: &crate::model::Rule) -> Result<(), String> {
    let set = |name: &str, want: Option<ValueShape>, key: &[Expr]| -> Result<(), String> {
        let s = rs.sets.get(name).ok_or_else(|| format!("unknown set @{name}"))?;
        if want.is_some_and(|w| w != s.decl.value) {
            return Err(format!("@{name} is not a {want:?} map"));
        }
        if key.len() != arity(s.decl.key) {
            return Err(format!("key of {} fields does not fit @{name}", key.len()));
        }
        if key.contains(&Expr::CtOriginalProtoDst) && !rule.matches.iter().any(|m| matches!(m, Match::L4Proto(_))) {
            return Err("ct original proto-dst needs a protocol match in the rule".into());
        }
        Ok(())
    };
    for m in &rule.matches {
        if let Match::Lookup { key, set: name, .. } = m {
            set(name, None, key)?;
        }
    }
    for s in &rule.stmts {
        match s {
            Stmt::DnatMap { key, map } => set(map, Some(ValueShape::Target), key)?,
            Stmt::RecordTarget { key, map, .. } => set(map, Some(ValueShape::Target), key)?,
            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) if !rs.chains.contains_key(c.as_ref()) => {
                return Err(format!("jump to unknown chain {c}"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn chain_referenced(rs: &Ruleset, name: &str) -> bool {
    let target = |v: &Verdict| matches!(v, Verdict::Jump(c) | Verdict::Goto(c) if c == name);
    rs.chains.values().flat_map(|c| &c.rules).flat_map(|r| &r.stmts).any(|s| matches!(s, Stmt::Verdict(v) if target(v)))
}

fn set_referenced(rs: &Ruleset, name: &str) -> bool {
    rs.chains.values().flat_map(|c| &c.rules).any(|r| {
        r.matches.iter().any(|m| matches!(m, Match::Lookup { set, .. } if set == name))
            || r.stmts.iter().any(|s| match s {
                Stmt::DnatMap { map, .. } | Stmt::RecordTarget { map, .. } => map == name,
                _ => false,
            })
    })
}

#[async_trait]
impl Kernel for FakeKernel {
    async fn apply(&mut self, tx: &Transaction) -> Result<(), KernelError> {
        let mut next = self.tables.clone();
        for cmd in &tx.commands {
            Self::apply_one(&mut next, tx.family, cmd).map_err(KernelError::Refused)?;
        }
        self.tables = next;
        self.applied.push(tx.clone());
        Ok(())
    }

    async fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        Ok(self
            .tables
            .keys()
            .filter(|(f, n)| *f == family && names::TABLES.contains(&n.as_str()))
            .map(|(_, n)| n.clone())
            .collect())
    }

    async fn outline(&mut self, family: IpFamily, table: &str) -> Result<Option<Outline>, KernelError> {
        Ok(self.table(family, table).map(Outline::of))
    }

    async fn element_digest(&mut self, family: IpFamily, table: &str, set: &str) -> Result<Option<(usize, u64)>, KernelError> {
        let Some(s) = self.table(family, table).and_then(|t| t.sets.get(set)) else {
            return Err(KernelError::Refused(format!("no set {set} in {table}")));
        };
        Ok(Some(crate::kernel::elements_digest(s.elements.iter().map(|(k, v)| (k, v.as_ref())))))
    }

    async fn lookup_digest(&mut self, family: IpFamily, table: &str, set: &str, keys: &[Key]) -> Result<Option<(usize, u64)>, KernelError> {
        let Some(s) = self.table(family, table).and_then(|t| t.sets.get(set)) else {
            return Err(KernelError::Refused(format!("no set {set} in {table}")));
        };
        Ok(Some(crate::kernel::elements_digest(keys.iter().filter_map(|k| s.elements.get_key_value(k).map(|(k, v)| (k, v.as_ref()))))))
    }

    async fn affinity_entries(&mut self, family: IpFamily, table: &str) -> Result<Vec<(Key, IpAddr, u16)>, KernelError> {
        Ok(self
            .table(family, table)
            .and_then(|t| t.sets.get(names::AFFINITY))
            .map(|s| {
                s.elements
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Some(Value::Target(ip, port)) => Some((*k, *ip, *port)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl FakeKernel {
    /// Adds an affinity entry as the kernel would when a packet is
    /// forwarded (to test the cleanup of stale entries).
    pub fn record_affinity(&mut self, family: IpFamily, table: &str, key: Key, target: (IpAddr, u16)) {
        if let Some(s) = self.tables.get_mut(&(family, table.to_string())).and_then(|t| t.sets.get_mut(names::AFFINITY)) {
            s.elements.insert(key, Some(Value::Target(target.0, target.1)));
        }
    }
}
