//! A change is a diff of two plain values: the last committed ruleset and
//! the desired one.

use crate::model::Ruleset;
use crate::text;
use crate::transaction::{Op, Transaction};

/// The commands that turn `old` into `new` in `table` (both of one family).
///
/// Order matters only for references: new sets and chains first, then
/// element changes, then rewritten chains, then removals.
pub fn diff(table: &str, old: &Ruleset, new: &Ruleset) -> Transaction {
    let mut tx = Transaction::new(new.family);
    let mut recreated = Vec::new();
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => tx.push(table, Op::AddSet { name: name.clone(), decl: set.decl }),
            Some(o) if o.decl != set.decl => recreated.push(name.clone()),
            Some(_) => {}
        }
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            tx.push(table, Op::AddChain { name: name.clone(), base: chain.base });
        }
    }
    for (name, set) in &new.sets {
        let old_elements = old.sets.get(name).filter(|o| o.decl == set.decl).map(|o| &o.elements);
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if let Some(old_elements) = old_elements {
            for (k, v) in old_elements {
                match set.elements.get(k) {
                    Some(nv) if nv == v => {}
                    Some(_) => removed.push(*k),
                    None => removed.push(*k),
                }
            }
            for (k, v) in &set.elements {
                if old_elements.get(k) != Some(v) {
                    added.push((*k, *v));
                }
            }
        } else if !recreated.contains(name) {
            added.extend(set.elements.iter().map(|(k, v)| (*k, *v)));
        }
        if !removed.is_empty() {
            tx.push(table, Op::DeleteElements { set: name.clone(), keys: removed });
        }
        if !added.is_empty() {
            tx.push(table, Op::AddElements { set: name.clone(), elements: added });
        }
    }
    let rewritten: Vec<&String> = new
        .chains
        .iter()
        .filter(|(name, chain)| old.chains.get(*name).is_some_and(|o| o.rules != chain.rules) || !recreated.is_empty())
        .map(|(name, _)| name)
        .collect();
    for name in &rewritten {
        tx.push(table, Op::FlushChain((*name).clone()));
    }
    for (name, chain) in &old.chains {
        if !new.chains.contains_key(name) && !chain.rules.is_empty() {
            tx.push(table, Op::FlushChain(name.clone()));
        }
    }
    for name in &recreated {
        let set = &new.sets[name];
        tx.push(table, Op::DeleteSet { name: name.clone(), map: text::is_map(&old.sets[name].decl) });
        tx.push(table, Op::AddSet { name: name.clone(), decl: set.decl });
        let elements: Vec<_> = set.elements.iter().map(|(k, v)| (*k, *v)).collect();
        if !elements.is_empty() {
            tx.push(table, Op::AddElements { set: name.clone(), elements });
        }
    }
    for (name, chain) in &new.chains {
        let is_new = !old.chains.contains_key(name);
        if is_new || rewritten.contains(&name) {
            tx.add_rules(table, name, chain);
        }
    }
    for (name, set) in &old.sets {
        if !new.sets.contains_key(name) {
            tx.push(table, Op::DeleteSet { name: name.clone(), map: text::is_map(&set.decl) });
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            tx.push(table, Op::DeleteChain(name.clone()));
        }
    }
    tx
}
