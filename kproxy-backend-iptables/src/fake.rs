//! An in-memory iptables for tests: it reads `iptables-restore --noflush`
//! text with the kernel's rules (jump targets must exist; `-D` needs an
//! identical rule; `-X` needs an empty, unreferenced chain; each table
//! commits atomically) and keeps the parsed, typed rules the tracer walks.

use std::collections::BTreeMap;

use async_trait::async_trait;
use kproxy_core::IpFamily;

use crate::render::Table;
use crate::rule::{tokenize, Rule, Target};

/// One table: chains in name order; built-in chains always exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeTable {
    /// Every chain's rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
}

impl FakeTable {
    fn new(table: Table) -> Self {
        FakeTable { chains: table.builtins().iter().map(|c| (c.to_string(), Vec::new())).collect() }
    }

    fn references(&self, chain: &str) -> usize {
        self.chains.values().flatten().filter(|r| matches!(&r.target, Target::Jump(t) if t == chain)).count()
    }
}

/// Both families' nat and filter tables.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeIptables {
    tables: BTreeMap<(IpFamily, Table), FakeTable>,
}

impl Default for FakeIptables {
    fn default() -> Self {
        let mut tables = BTreeMap::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            for table in Table::ALL {
                tables.insert((family, table), FakeTable::new(table));
            }
        }
        FakeIptables { tables }
    }
}

fn table_of(name: &str) -> Result<Table, String> {
    match name {
        "nat" => Ok(Table::Nat),
        "filter" => Ok(Table::Filter),
        other => Err(format!("table {other:?} is not one kproxy writes")),
    }
}

impl FakeIptables {
    /// A fake with empty tables.
    pub fn new() -> Self {
        FakeIptables::default()
    }

    /// One table.
    pub fn table(&self, family: IpFamily, table: Table) -> &FakeTable {
        &self.tables[&(family, table)]
    }

    /// Mutable access, to simulate someone else's edits.
    pub fn table_mut(&mut self, family: IpFamily, table: Table) -> &mut FakeTable {
        self.tables.get_mut(&(family, table)).expect("both tables exist")
    }

    /// Applies `iptables-restore --noflush` input. Tables committed
    /// before an error stay committed, as with the real tool; the failing
    /// table is left as it was.
    pub fn restore(&mut self, family: IpFamily, text: &str) -> Result<(), String> {
        let mut current: Option<(Table, FakeTable)> = None;
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line}", n + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(at("table started before COMMIT".into()));
                }
                let table = table_of(name).map_err(at)?;
                current = Some((table, self.tables[&(family, table)].clone()));
                continue;
            }
            let Some((table, work)) = current.as_mut() else { return Err(at("outside a table".into())) };
            if line == "COMMIT" {
                let (table, work) = current.take().expect("checked");
                self.tables.insert((family, table), work);
                continue;
            }
            apply_line(*table, work, line, family).map_err(at)?;
        }
        if current.is_some() {
            return Err("input ends without COMMIT".into());
        }
        Ok(())
    }

    /// `iptables-save -t TABLE`-like text: chain lines, then rules.
    pub fn save(&self, family: IpFamily, table: Table) -> String {
        let t = self.table(family, table);
        let mut out = format!("*{}\n", table.name());
        for name in t.chains.keys() {
            let policy = if table.builtins().contains(&name.as_str()) { "ACCEPT" } else { "-" };
            out.push_str(&format!(":{name} {policy} [0:0]\n"));
        }
        for (name, rules) in &t.chains {
            for r in rules {
                out.push_str(&format!("-A {name} {}\n", r.args()));
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn apply_line(table: Table, work: &mut FakeTable, line: &str, family: IpFamily) -> Result<(), String> {
    if let Some(decl) = line.strip_prefix(':') {
        let name = decl.split_whitespace().next().ok_or("empty chain line")?;
        if name.len() > 28 {
            return Err(format!("chain name {name:?} longer than 28 characters"));
        }
        if table.builtins().contains(&name) {
            return Ok(());
        }
        work.chains.insert(name.to_string(), Vec::new());
        return Ok(());
    }
    let (op, rest) = line.split_once(' ').ok_or("no operation")?;
    let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
    if !work.chains.contains_key(chain) {
        return Err(format!("no chain {chain:?}"));
    }
    let parse = |args: &str| -> Result<Rule, String> {
        let rule = Rule::parse(args, family)?;
        if let Target::Jump(t) = &rule.target {
            if !work.chains.contains_key(t) {
                return Err(format!("jump to missing chain {t:?}"));
            }
        }
        Ok(rule)
    };
    match op {
        "-A" => {
            let rule = parse(args)?;
            work.chains.get_mut(chain).expect("checked").push(rule);
        }
        "-I" => {
            let tokens = tokenize(args)?;
            let (index, args) = match tokens.first().and_then(|t| t.parse::<usize>().ok()) {
                Some(i) => (i, args.split_once(' ').map_or("", |(_, a)| a)),
                None => (1, args),
            };
            let rule = parse(args)?;
            let rules = work.chains.get_mut(chain).expect("checked");
            if index == 0 || index > rules.len() + 1 {
                return Err(format!("index {index} out of range"));
            }
            rules.insert(index - 1, rule);
        }
        "-D" => {
            let rule = Rule::parse(args, family)?;
            let rules = work.chains.get_mut(chain).expect("checked");
            let at = rules.iter().position(|r| *r == rule).ok_or("no such rule to delete")?;
            rules.remove(at);
        }
        "-F" => work.chains.get_mut(chain).expect("checked").clear(),
        "-X" => {
            if table.builtins().contains(&chain) {
                return Err("cannot delete a built-in chain".into());
            }
            if !work.chains[chain].is_empty() {
                return Err(format!("chain {chain} is not empty"));
            }
            if work.references(chain) > 0 {
                return Err(format!("chain {chain} is still referenced"));
            }
            work.chains.remove(chain);
        }
        other => return Err(format!("unknown operation {other:?}")),
    }
    Ok(())
}

#[async_trait]
impl crate::kernel::Kernel for FakeIptables {
    async fn restore(&mut self, family: IpFamily, text: &str) -> Result<(), crate::kernel::KernelError> {
        FakeIptables::restore(self, family, text).map_err(crate::kernel::KernelError::Fake)
    }

    async fn list(&mut self, family: IpFamily, table: Table, chains: &[&str]) -> Result<crate::kernel::Listing, crate::kernel::KernelError> {
        Ok(crate::kernel::Listing::parse(&self.save(family, table), table).only(chains))
    }

    async fn chain_names(&mut self, family: IpFamily, table: Table) -> Result<Vec<String>, crate::kernel::KernelError> {
        Ok(self.table(family, table).chains.keys().cloned().collect())
    }

    async fn digests(&mut self, family: IpFamily, table: Table, chains: Option<&[String]>) -> Result<Option<crate::kernel::Digests>, crate::kernel::KernelError> {
        let t = self.table(family, table);
        let digest = |rules: &Vec<crate::rule::Rule>| {
            let mut h = std::hash::DefaultHasher::new();
            for r in rules {
                std::hash::Hash::hash(&r.args(), &mut h);
            }
            std::hash::Hasher::finish(&h)
        };
        Ok(Some(match chains {
            None => t.chains.iter().map(|(c, r)| (c.clone(), digest(r))).collect(),
            Some(names) => names.iter().filter_map(|c| t.chains.get(c).map(|r| (c.clone(), digest(r)))).collect(),
        }))
    }
}

