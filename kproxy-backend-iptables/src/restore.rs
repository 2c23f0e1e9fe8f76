//! `iptables-restore --noflush` input: a full restore that writes every
//! kproxy chain, and a partial one that rewrites only the chains of ports
//! that changed and swaps only their rules in the shared chains.
//!
//! With `--noflush` a table keeps everything a restore does not name: a
//! declared chain (`:NAME - [0:0]`) is created or flushed, `-D` deletes
//! one rule by its exact text, `-I CHAIN 1` inserts at the top, `-X`
//! deletes a chain (declared first, so it is empty). Each table's section
//! ends with `COMMIT` and is applied atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::render::{Chains, Journal, Jump, Renderer, ServiceRules, Shared, Table};
use crate::rule::Rule;

/// Chains to delete per table (found stale by listing the kernel).
pub type Stale = BTreeMap<Table, BTreeSet<String>>;

fn section(out: &mut String, table: Table, declare: &BTreeSet<String>, body: &str, delete: &BTreeSet<String>) {
    if declare.is_empty() && body.is_empty() && delete.is_empty() {
        return;
    }
    writeln!(out, "*{}", table.name()).expect("String");
    for chain in declare.iter().chain(delete.difference(declare)) {
        writeln!(out, ":{chain} - [0:0]").expect("String");
    }
    out.push_str(body);
    for chain in delete {
        writeln!(out, "-X {chain}").expect("String");
    }
    out.push_str("COMMIT\n");
}

fn append(body: &mut String, chain: &str, rule: &Rule) {
    writeln!(body, "-A {chain} {}", rule.args()).expect("String");
}

/// Inserts the missing jumps so they end up in [`crate::render::jumps`]'s
/// order above everything else.
fn insert_jumps(body: &mut String, table: Table, missing: &[Jump]) {
    for j in missing.iter().rev().filter(|j| j.table == table) {
        writeln!(body, "-I {} 1 {}", j.from, j.rule.args()).expect("String");
    }
}

/// Other chains than the renderer's (another mode's ruleset, such as the
/// IPVS backend's): every chain of each table declared (so flushed) and
/// written, with the `missing` jumps inserted above everything else.
pub fn chains(tables: &[(Table, &Chains)], missing: &[Jump]) -> String {
    let mut out = String::new();
    for (table, chains) in tables {
        let mut body = String::new();
        insert_jumps(&mut body, *table, missing);
        for (chain, rules) in chains.iter() {
            for rule in rules {
                append(&mut body, chain, rule);
            }
        }
        section(&mut out, *table, &chains.keys().cloned().collect(), &body, &BTreeSet::new());
    }
    out
}

/// Everything: every kproxy chain declared (so flushed) and written, the
/// missing jumps inserted, and `stale` chains deleted; written straight
/// from the renderer, never copying its rules.
pub fn full(renderer: &Renderer, stale: &Stale, missing: &[Jump]) -> String {
    full_pieces(renderer, stale, missing).collect()
}

/// [`full`] as pieces (a table's declarations, then a chain at a time),
/// for feeding `iptables-restore` without holding the whole text: at
/// 10,000 Services it is 45 MiB.
pub fn full_pieces<'a>(renderer: &'a Renderer, stale: &'a Stale, missing: &'a [Jump]) -> impl Iterator<Item = String> + Send + 'a {
    Table::ALL.into_iter().flat_map(move |table| {
        let chains = renderer.chains_of(table);
        let delete: Vec<String> = stale.get(&table).map(|s| s.iter().filter(|c| !chains.contains_key(c.as_str())).cloned().collect()).unwrap_or_default();
        let mut head = format!("*{}\n", table.name());
        for chain in chains.keys().copied().chain(delete.iter().map(String::as_str)) {
            writeln!(head, ":{chain} - [0:0]").expect("String");
        }
        insert_jumps(&mut head, table, missing);
        let mut tail = String::new();
        for chain in &delete {
            writeln!(tail, "-X {chain}").expect("String");
        }
        tail.push_str("COMMIT\n");
        let body = chains.into_iter().map(|(name, rules)| {
            let mut text = String::new();
            for r in rules {
                append(&mut text, name, r);
            }
            text
        });
        std::iter::once(head).chain(body).chain(std::iter::once(tail))
    })
}

/// The named chains rewritten whole from the renderer (declared, so
/// flushed, then every rule), the `delete` chains removed, and the
/// `missing` jumps inserted: the repair of chains changed from outside,
/// without the cost of a full restore.
pub fn rewrite(renderer: &Renderer, chains: &Stale, delete: &Stale, missing: &[Jump]) -> String {
    let mut out = String::new();
    for table in Table::ALL {
        let all = renderer.chains_of(table);
        let none = BTreeSet::new();
        let wanted = chains.get(&table).unwrap_or(&none);
        let declare: BTreeSet<String> = wanted.iter().filter(|c| all.contains_key(c.as_str())).cloned().collect();
        let delete: BTreeSet<String> = delete.get(&table).unwrap_or(&none).iter().filter(|c| !all.contains_key(c.as_str())).cloned().collect();
        let mut body = String::new();
        insert_jumps(&mut body, table, missing);
        for chain in &declare {
            for r in &all[chain.as_str()] {
                append(&mut body, chain, r);
            }
        }
        section(&mut out, table, &declare, &body, &delete);
    }
    out
}

/// The chains a restore text touches, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Declared, so flushed and rewritten whole.
    pub declared: Stale,
    /// Edited in place with `-A`, `-D` or `-I` (and not declared).
    pub edited: Stale,
    /// Deleted with `-X`.
    pub deleted: Stale,
}

/// What `text` (restore input) does to which chains.
pub fn touched(text: &str) -> Touched {
    let mut out = Touched::default();
    let mut table = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Table::ALL.into_iter().find(|t| t.name() == name);
            continue;
        }
        let Some(t) = table else { continue };
        let chain = |rest: &str| rest.split_whitespace().next().unwrap_or_default().to_string();
        if let Some(rest) = line.strip_prefix(':') {
            out.declared.entry(t).or_default().insert(chain(rest));
        } else if let Some(rest) = line.strip_prefix("-X ") {
            out.deleted.entry(t).or_default().insert(chain(rest));
        } else if let Some(rest) = ["-A ", "-D ", "-I "].iter().find_map(|op| line.strip_prefix(op)) {
            out.edited.entry(t).or_default().insert(chain(rest));
        }
    }
    for (t, edited) in out.edited.iter_mut() {
        edited.retain(|c| !out.declared.get(t).is_some_and(|d| d.contains(c)));
    }
    for (t, declared) in out.declared.iter_mut() {
        declared.retain(|c| !out.deleted.get(t).is_some_and(|d| d.contains(c)));
    }
    out
}

/// Only what `journal` says changed: each changed port's own chains
/// rewritten (or deleted), its old rules deleted from the shared chains
/// and its new ones inserted at their top (keeping each chain's fixed tail,
/// such as the NodePort jump, last), plus the missing jumps.
pub fn partial(renderer: &Renderer, journal: &Journal, missing: &[Jump]) -> String {
    let empty = ServiceRules::default();
    let mut out = String::new();
    for table in Table::ALL {
        let mut declare = BTreeSet::new();
        let mut delete = BTreeSet::new();
        let mut body = String::new();
        insert_jumps(&mut body, table, missing);
        for (name, before) in &journal.previous {
            let before = before.as_ref().unwrap_or(&empty);
            let now = renderer.ports().get(name).unwrap_or(&empty);
            for shared in Shared::ALL.into_iter().filter(|s| s.chain().0 == table) {
                let (old, new) = (shared.rules(before), shared.rules(now));
                if old == new {
                    continue;
                }
                let chain = shared.chain().1;
                for r in old {
                    writeln!(body, "-D {chain} {}", r.args()).expect("String");
                }
                for r in new.iter().rev() {
                    writeln!(body, "-I {chain} 1 {}", r.args()).expect("String");
                }
            }
            if table == Table::Nat {
                let new_chains: BTreeMap<&String, &Vec<Rule>> = now.chains.iter().map(|(n, r)| (n, r)).collect();
                for (chain, rules) in &now.chains {
                    let unchanged = before.chains.iter().any(|(n, r)| n == chain && r == rules);
                    if !unchanged {
                        declare.insert(chain.clone());
                        for r in rules {
                            append(&mut body, chain, r);
                        }
                    }
                }
                for (chain, _) in &before.chains {
                    if !new_chains.contains_key(chain) {
                        delete.insert(chain.clone());
                    }
                }
            }
        }
        section(&mut out, table, &declare, &body, &delete);
    }
    out
}

/// Removes everything kproxy (or kube-proxy) installed, given each
/// table's `iptables-save` text: the jumps from built-in chains to owned
/// chains are deleted, then the owned chains are flushed and deleted.
/// Chains kubelet owns (`KUBE-KUBELET-CANARY`, `KUBE-MARK-DROP`, ...) stay,
/// and so does `KUBE-FIREWALL` unless `localnet_safeguard` (see
/// [`localnet_safeguard_is_ours`]), and so does every chain `keep` names.
pub fn cleanup(saved: &[(Table, crate::kernel::Listing)], localnet_safeguard: bool, keep: &dyn Fn(&str) -> bool) -> String {
    cleanup_chains(saved, |c| (is_ours(c) || (localnet_safeguard && c == crate::names::FIREWALL)) && !keep(c))
}

/// Whether the filter table's `KUBE-FIREWALL` is only the localnet
/// safeguard kproxy writes for localhost NodePorts (one rule) on a node
/// where no kubelet manages iptables (kubelet writes the same chain, and
/// marks its tables with `KUBE-KUBELET-CANARY`): then `--cleanup` removes
/// it with the rest.
pub fn localnet_safeguard_is_ours(filter: &crate::kernel::Listing) -> bool {
    filter.chains.get(crate::names::FIREWALL) == Some(&1) && !filter.chains.contains_key(crate::names::KUBELET_CANARY)
}

/// [`cleanup`] for the chains `ours` claims (another mode's ruleset, such
/// as the IPVS backend's).
pub fn cleanup_chains(saved: &[(Table, crate::kernel::Listing)], ours: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for (table, listing) in saved {
        let owned: BTreeSet<String> = listing.chains.keys().filter(|c| ours(c)).cloned().collect();
        let mut body = String::new();
        for line in &listing.builtin_rules {
            let jumps_to_ours = line.rsplit_once("-j ").is_some_and(|(_, t)| owned.contains(t.split_whitespace().next().unwrap_or_default()));
            if jumps_to_ours {
                if let Some(rule) = line.strip_prefix("-A ") {
                    writeln!(body, "-D {rule}").expect("String");
                }
            }
        }
        section(&mut out, *table, &owned, &body, &owned);
    }
    out
}

/// Whether iptables mode writes `chain` (a fixed chain or one of a service
/// port or endpoint), in kproxy as in upstream kube-proxy.
pub fn is_ours(chain: &str) -> bool {
    use crate::names::*;
    [SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL, FORWARD, POSTROUTING, MARK_MASQ, CANARY].contains(&chain)
        || SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// How many rules (`-A` and `-I` lines) a restore text writes per table.
pub fn rule_lines(text: &str) -> BTreeMap<Table, usize> {
    let mut out = BTreeMap::new();
    let mut table = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Table::ALL.into_iter().find(|t| t.name() == name);
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            if let Some(t) = table {
                *out.entry(t).or_insert(0) += 1;
            }
        }
    }
    out
}
