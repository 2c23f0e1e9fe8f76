//! Transactions: what one `nft -f` run sends, as typed commands.

use std::fmt::Write;

use kproxy_core::IpFamily;

use crate::model::{family_keyword, BaseChain, Chain, Key, Rule, SetDecl, Value};
use crate::text;

/// One command of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table`.
    AddTable,
    /// `delete table`.
    DeleteTable,
    /// `add chain` (a base chain when `base` is set).
    AddChain {
        /// Chain name.
        name: String,
        /// Hook, type and priority of a base chain.
        base: Option<BaseChain>,
    },
    /// `flush chain`.
    FlushChain(String),
    /// `delete chain`.
    DeleteChain(String),
    /// `add rule`.
    AddRule {
        /// Chain name.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `add set` / `add map`.
    AddSet {
        /// Set name.
        name: String,
        /// Declaration.
        decl: SetDecl,
    },
    /// `delete set` / `delete map`.
    DeleteSet {
        /// Set name.
        name: String,
        /// Whether it is a map.
        map: bool,
    },
    /// `add element`.
    AddElements {
        /// Set name.
        set: String,
        /// The elements.
        elements: Vec<(Key, Option<Value>)>,
    },
    /// `delete element`.
    DeleteElements {
        /// Set name.
        set: String,
        /// The keys.
        keys: Vec<Key>,
    },
}

/// A command on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The table it acts on.
    pub table: String,
    /// What it does.
    pub op: Op,
}

/// An atomic batch of commands for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The family of every table it touches.
    pub family: IpFamily,
    /// The commands, in order.
    pub commands: Vec<Command>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new(family: IpFamily) -> Self {
        Transaction {
            family,
            commands: Vec::new(),
        }
    }

    /// Appends a command.
    pub fn push(&mut self, table: &str, op: Op) {
        self.commands.push(Command {
            table: table.to_string(),
            op,
        });
    }

    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// How many elements it adds or deletes.
    pub fn element_count(&self) -> usize {
        self.commands
            .iter()
            .map(|c| match &c.op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 0,
            })
            .sum()
    }

    /// Appends commands that create `ruleset` in `table`, base chains
    /// included or not.
    pub fn create(&mut self, table: &str, ruleset: &crate::model::Ruleset, with_base_chains: bool) {
        self.create_structure(table, ruleset, with_base_chains);
        for (name, set) in &ruleset.sets {
            if !set.elements.is_empty() {
                let elements = set.elements.iter().map(|(k, v)| (*k, *v)).collect();
                self.push(table, Op::AddElements { set: name.clone(), elements });
            }
        }
    }

    /// Appends commands that create the table, sets, chains and rules of
    /// `ruleset` in `table`, but no elements.
    pub fn create_structure(&mut self, table: &str, ruleset: &crate::model::Ruleset, with_base_chains: bool) {
        self.push(table, Op::AddTable);
        for (name, set) in &ruleset.sets {
            self.push(table, Op::AddSet { name: name.clone(), decl: set.decl });
        }
        for (name, chain) in ruleset.chains.iter().filter(|(_, c)| c.base.is_none() || with_base_chains) {
            self.push(table, Op::AddChain { name: name.clone(), base: chain.base });
        }
        for (name, chain) in ruleset.chains.iter().filter(|(_, c)| c.base.is_none() || with_base_chains) {
            self.add_rules(table, name, chain);
        }
    }

    /// Appends `add rule` for every rule of `chain`.
    pub fn add_rules(&mut self, table: &str, name: &str, chain: &Chain) {
        for rule in &chain.rules {
            self.push(table, Op::AddRule { chain: name.to_string(), rule: rule.clone() });
        }
    }

    /// The `nft -f` text of the transaction.
    pub fn to_nft(&self) -> String {
        let fam = family_keyword(self.family);
        let mut out = String::new();
        for Command { table, op } in &self.commands {
            let t = format!("{fam} {table}");
            match op {
                Op::AddTable => {
                    let _ = writeln!(out, "add table {t}");
                }
                Op::DeleteTable => {
                    let _ = writeln!(out, "delete table {t}");
                }
                Op::AddChain { name, base } => {
                    let spec = text::chain_spec(&Chain { base: *base, rules: Vec::new() })
                        .map(|s| format!(" {{ {s} }}"))
                        .unwrap_or_default();
                    let _ = writeln!(out, "add chain {t} {name}{spec}");
                }
                Op::FlushChain(name) => {
                    let _ = writeln!(out, "flush chain {t} {name}");
                }
                Op::DeleteChain(name) => {
                    let _ = writeln!(out, "delete chain {t} {name}");
                }
                Op::AddRule { chain, rule } => {
                    let _ = writeln!(out, "add rule {t} {chain} {}", text::rule(rule, self.family));
                }
                Op::AddSet { name, decl } => {
                    let kw = if text::is_map(decl) { "map" } else { "set" };
                    let _ = writeln!(out, "add {kw} {t} {name} {{ {} }}", text::set_spec(decl, self.family));
                }
                Op::DeleteSet { name, map } => {
                    let _ = writeln!(out, "delete {} {t} {name}", if *map { "map" } else { "set" });
                }
                Op::AddElements { set, elements } => {
                    let _ = write!(out, "add element {t} {set} {{ ");
                    let _ = text::element_list(&mut out, elements.iter().map(|(k, v)| text::element(k, v)));
                    out.push_str(" }\n");
                }
                Op::DeleteElements { set, keys } => {
                    let _ = write!(out, "delete element {t} {set} {{ ");
                    let _ = text::element_list(&mut out, keys.iter().map(text::key));
                    out.push_str(" }\n");
                }
            }
        }
        out
    }
}
