//! The element changes since the last sync, and the transaction they make.

use std::collections::BTreeMap;

use crate::model::{Chain, Key, Ruleset, SetDecl, Value};
use crate::text;
use crate::transaction::{Op, Transaction};

/// Which elements changed since the last [`super::Renderer::take_journal`]:
/// for each touched key, whether (and with what value) it existed before.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    before: BTreeMap<String, BTreeMap<Key, Option<Option<Value>>>>,
    /// Everything may have changed (a full re-render): the caller rebuilds
    /// instead of sending a transaction, so no keys are recorded.
    full: bool,
}

/// The committed shape of a table: its chains and set declarations. With
/// the renderer's elements, it is everything kproxy knows about the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    /// Chains and their rules.
    pub chains: BTreeMap<String, Chain>,
    /// Set and map declarations.
    pub sets: BTreeMap<String, SetDecl>,
}

impl Structure {
    /// The structure of a ruleset.
    pub fn of(rs: &Ruleset) -> Structure {
        Structure {
            chains: rs.chains.clone(),
            sets: rs.sets.iter().map(|(n, s)| (n.clone(), s.decl)).collect(),
        }
    }
}

impl Journal {
    /// Records that `key` in `set` changed; `before` is its previous value
    /// (`None` if it was absent). Only the first change since the last take
    /// is remembered.
    pub(crate) fn touched(&mut self, set: &str, key: Key, before: Option<Option<Value>>) {
        if self.full {
            return;
        }
        let per_set = match self.before.get_mut(set) {
            Some(m) => m,
            None => self.before.entry(set.to_string()).or_default(),
        };
        per_set.entry(key).or_insert(before);
    }

    /// Marks the journal as "everything changed".
    pub(crate) fn mark_full(&mut self) {
        self.full = true;
        self.before.clear();
    }

    /// Whether everything may have changed: only a rebuild is correct.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// How many element keys were touched.
    pub fn touched_count(&self) -> usize {
        self.before.values().map(BTreeMap::len).sum()
    }

    /// The transaction that takes a table from `previous` (plus the
    /// elements it had) to `now`.
    pub fn transaction(&self, table: &str, previous: &Structure, now: &Ruleset) -> Transaction {
        let mut tx = Transaction::new(now.family);
        for (name, set) in &now.sets {
            if !previous.sets.contains_key(name) {
                tx.push(table, Op::AddSet { name: name.clone(), decl: set.decl });
            }
        }
        for (name, chain) in &now.chains {
            if !previous.chains.contains_key(name) {
                tx.push(table, Op::AddChain { name: name.clone(), base: chain.base });
            }
        }
        for (name, keys) in &self.before {
            let Some(set) = now.sets.get(name) else { continue };
            let existed = previous.sets.get(name) == Some(&set.decl);
            let mut removed = Vec::new();
            let mut added = Vec::new();
            for (key, before) in keys {
                let current = set.elements.get(key);
                match (existed.then_some(before.as_ref()).flatten(), current) {
                    (Some(b), Some(c)) if b == c => {}
                    (Some(_), Some(c)) => {
                        removed.push(*key);
                        added.push((*key, *c));
                    }
                    (Some(_), None) => removed.push(*key),
                    (None, Some(c)) => added.push((*key, *c)),
                    (None, None) => {}
                }
            }
            if !removed.is_empty() {
                tx.push(table, Op::DeleteElements { set: name.clone(), keys: removed });
            }
            if !added.is_empty() {
                tx.push(table, Op::AddElements { set: name.clone(), elements: added });
            }
        }
        // A chain that only grew gets its new rules appended; any other
        // change rewrites it (flush, then add every rule).
        let mut changed: Vec<&String> = Vec::new();
        for (name, chain) in &now.chains {
            let Some(prev) = previous.chains.get(name) else { continue };
            if prev.rules == chain.rules {
                continue;
            }
            if chain.rules.starts_with(&prev.rules) {
                for rule in &chain.rules[prev.rules.len()..] {
                    tx.push(table, Op::AddRule { chain: name.clone(), rule: rule.clone() });
                }
            } else {
                changed.push(name);
            }
        }
        for name in &changed {
            tx.push(table, Op::FlushChain((*name).clone()));
        }
        for (name, chain) in &previous.chains {
            if !now.chains.contains_key(name) && !chain.rules.is_empty() {
                tx.push(table, Op::FlushChain(name.clone()));
            }
        }
        for (name, chain) in &now.chains {
            if !previous.chains.contains_key(name) || changed.contains(&name) {
                tx.add_rules(table, name, chain);
            }
        }
        for (name, decl) in &previous.sets {
            if !now.sets.contains_key(name) {
                tx.push(table, Op::DeleteSet { name: name.clone(), map: text::is_map(decl) });
            }
        }
        for name in previous.chains.keys() {
            if !now.chains.contains_key(name) {
                tx.push(table, Op::DeleteChain(name.clone()));
            }
        }
        tx
    }
}
