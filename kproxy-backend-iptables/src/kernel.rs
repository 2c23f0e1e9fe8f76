//! The kernel step: one `iptables-restore --noflush` per sync and family,
//! and `iptables-save -t TABLE` to see what the kernel holds. Never one
//! process per rule.
//!
//! [`IptablesCli`] runs the real tools of one flavour (`iptables-legacy`
//! or `iptables-nft`), optionally inside a network namespace; [`Flavour::detect`]
//! picks the flavour the host already uses, as upstream's image does.
//! The fake kernel (`fake.rs`) implements [`Kernel`] too.

use std::process::Stdio;

use async_trait::async_trait;
use kproxy_core::IpFamily;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::render::{Jump, Table};
use crate::rule::{Match, Target};

/// A kernel step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The tool could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The command.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The tool ran and refused.
    #[error("{program} failed ({status}): {message}")]
    Failed {
        /// The command.
        program: String,
        /// Its exit status.
        status: String,
        /// The first lines of its stderr.
        message: String,
    },
    /// The fake kernel refused.
    #[error("fake iptables: {0}")]
    Fake(String),
    /// Reading rules over netlink failed.
    #[error("reading iptables-nft's rules: {0}")]
    Netlink(String),
}

/// What the proxier needs of a kernel. Listing is split so that a drift
/// check reads only the chains it compares: with `iptables-nft`, saving a
/// whole table of 320,000 rules takes minutes.
#[async_trait]
pub trait Kernel: Send + std::fmt::Debug {
    /// Applies `iptables-restore --noflush` input to `family`'s tables.
    async fn restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError>;
    /// Applies restore input produced piece by piece. The default
    /// collects it and calls [`Kernel::restore`]; the real tools are fed
    /// as the pieces come, so a large restore is never held whole.
    async fn restore_pieces(&mut self, family: IpFamily, pieces: &mut (dyn Iterator<Item = String> + Send)) -> Result<(), KernelError> {
        let text: String = pieces.collect();
        self.restore(family, &text).await
    }
    /// The named chains of `table` that exist, with their rule counts, and
    /// the rules of the named built-in chains (`-A CHAIN ...`).
    async fn list(&mut self, family: IpFamily, table: Table, chains: &[&str]) -> Result<Listing, KernelError>;
    /// Every chain of `table`.
    async fn chain_names(&mut self, family: IpFamily, table: Table) -> Result<Vec<String>, KernelError>;
    /// A digest of each chain's rules, as the kernel holds them: of every
    /// chain of `table` (`chains` None; empty chains included), or of the
    /// named ones (a missing chain is absent from the answer). Same rules,
    /// same digest; traffic (counters) changes nothing. None when this
    /// kernel cannot read rules cheaply (iptables-legacy, whose only
    /// reading is a whole-table save): the proxier then rewrites
    /// everything on each periodic sync instead of comparing.
    async fn digests(&mut self, family: IpFamily, table: Table, chains: Option<&[String]>) -> Result<Option<Digests>, KernelError> {
        let _ = (family, table, chains);
        Ok(None)
    }
}

/// Chain name → digest of its rules (see [`Kernel::digests`]).
pub type Digests = std::collections::BTreeMap<String, u64>;

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-legacy` (the x_tables kernel API).
    Legacy,
    /// `iptables-nft` (iptables rules in nf_tables).
    Nft,
}

impl Flavour {
    /// The tools' name suffix.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
        }
    }

    /// Picks the flavour the host's other components already use, the
    /// way upstream's image does: a `KUBE-IPTABLES-HINT` or
    /// `KUBE-KUBELET-CANARY` chain in one flavour's mangle table decides
    /// (nft first); otherwise the flavour holding more rules, nft on a
    /// tie. `netns` runs the tools inside that network namespace.
    pub async fn detect(netns: Option<&str>) -> (Flavour, String) {
        for flavour in [Flavour::Nft, Flavour::Legacy] {
            let cli = IptablesCli::new(flavour, netns);
            if let Ok(mangle) = cli.run(&cli.tool(IpFamily::V4, "save"), &["-t", "mangle"], None).await {
                if mangle.contains(":KUBE-IPTABLES-HINT") || mangle.contains(":KUBE-KUBELET-CANARY") {
                    return (flavour, format!("{} has kubelet's hint chain", cli.tool(IpFamily::V4, "save")));
                }
            }
        }
        let mut counts = [0usize; 2];
        for (i, flavour) in [Flavour::Legacy, Flavour::Nft].into_iter().enumerate() {
            let cli = IptablesCli::new(flavour, netns);
            for family in [IpFamily::V4, IpFamily::V6] {
                if let Ok(out) = cli.run(&cli.tool(family, "save"), &[], None).await {
                    counts[i] += out.lines().filter(|l| l.starts_with('-')).count();
                }
            }
        }
        let why = format!("{} legacy rules, {} nft rules", counts[0], counts[1]);
        if counts[0] > counts[1] {
            (Flavour::Legacy, why)
        } else {
            (Flavour::Nft, why)
        }
    }
}

/// The real tools of one flavour.
#[derive(Debug, Clone)]
pub struct IptablesCli {
    flavour: Flavour,
    prefix: Vec<String>,
    netns: Option<String>,
}

impl IptablesCli {
    /// The `flavour` tools, inside `netns` if given.
    pub fn new(flavour: Flavour, netns: Option<&str>) -> Self {
        let prefix = match netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.into()],
            None => Vec::new(),
        };
        IptablesCli { flavour, prefix, netns: netns.map(str::to_string) }
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Whether this flavour's tools run here (they read the nat table).
    pub async fn available(&self) -> bool {
        self.run(&self.tool(IpFamily::V4, "save"), &["-t", "nat"], None).await.is_ok()
    }

    /// `iptables-FLAVOUR` or `ip6tables-FLAVOUR`.
    fn command(&self, family: IpFamily) -> String {
        let base = if family == IpFamily::V6 { "ip6tables" } else { "iptables" };
        format!("{base}-{}", self.flavour.name())
    }

    fn tool(&self, family: IpFamily, what: &str) -> String {
        let base = if family == IpFamily::V6 { "ip6tables" } else { "iptables" };
        format!("{base}-{}-{what}", self.flavour.name())
    }

    async fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
        match stdin {
            Some(text) => self.run_fed(tool, args, Some(&mut std::iter::once(text.to_string()))).await,
            None => self.run_fed(tool, args, None).await,
        }
    }

    /// Runs `tool`, feeding it `pieces` as they are produced, in writes of
    /// about a MiB, so a large restore is never held whole.
    async fn run_fed(&self, tool: &str, args: &[&str], pieces: Option<&mut (dyn Iterator<Item = String> + Send)>) -> Result<String, KernelError> {
        const BATCH: usize = 1 << 20;
        let mut argv: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        argv.push(tool);
        argv.extend_from_slice(args);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        cmd.stdin(if pieces.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| KernelError::Spawn { program: tool.to_string(), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let mut write_error = None;
        if let (Some(pieces), Some(mut pipe)) = (pieces, child.stdin.take()) {
            let mut buf = String::with_capacity(BATCH + BATCH / 4);
            for piece in pieces {
                buf.push_str(&piece);
                if buf.len() >= BATCH {
                    if let Err(e) = pipe.write_all(buf.as_bytes()).await {
                        write_error = Some(e);
                        break;
                    }
                    buf.clear();
                }
            }
            if write_error.is_none() {
                write_error = pipe.write_all(buf.as_bytes()).await.err();
            }
            drop(pipe);
        }
        // If the tool stopped reading, its exit status and stderr say why.
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.lines().take(3).collect::<Vec<_>>().join(" | ");
            return Err(KernelError::Failed { program: tool.to_string(), status: out.status.to_string(), message });
        }
        if let Some(e) = write_error {
            return Err(spawn_err(e));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Checks restore input without applying it (`iptables-restore --test`).
    pub async fn test(&self, family: IpFamily, text: &str) -> Result<(), KernelError> {
        self.run(&self.tool(family, "restore"), &["--noflush", "--test"], Some(text)).await.map(|_| ())
    }
}

impl IptablesCli {
    /// `iptables-save -t TABLE`. iptables-nft-save recurses deeply on
    /// large tables, so it runs with an unlimited stack.
    pub async fn save(&self, family: IpFamily, table: Table) -> Result<String, KernelError> {
        let tool = self.tool(family, "save");
        match self.flavour {
            Flavour::Legacy => self.run(&tool, &["-t", table.name()], None).await,
            Flavour::Nft => self.run("sh", &["-c", &format!("ulimit -s unlimited 2>/dev/null; exec {tool} -t {}", table.name())], None).await,
        }
    }
}

#[async_trait]
impl Kernel for IptablesCli {
    async fn restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError> {
        if text.is_empty() {
            return Ok(());
        }
        // -w: wait for the xtables lock other tools may hold.
        self.run(&self.tool(family, "restore"), &["--noflush", "-w", "5"], Some(text)).await.map(|_| ())
    }

    async fn restore_pieces(&mut self, family: IpFamily, pieces: &mut (dyn Iterator<Item = String> + Send)) -> Result<(), KernelError> {
        self.run_fed(&self.tool(family, "restore"), &["--noflush", "-w", "5"], Some(pieces)).await.map(|_| ())
    }

    async fn list(&mut self, family: IpFamily, table: Table, chains: &[&str]) -> Result<Listing, KernelError> {
        match self.flavour {
            // Legacy reads the whole table for any listing: one save is cheapest.
            Flavour::Legacy => Ok(Listing::parse(&self.save(family, table).await?, table).only(chains)),
            // nf_tables lists one chain's rules at a time, cheaply.
            Flavour::Nft => {
                let tool = self.command(family);
                let tool = tool.as_str();
                let mut text = String::new();
                for chain in chains {
                    match self.run(tool, &["-w", "5", "-t", table.name(), "-S", chain], None).await {
                        Ok(out) => {
                            text.push_str(&format!(":{chain} - [0:0]\n"));
                            text.extend(out.lines().filter(|l| l.starts_with("-A ")).map(|l| format!("{l}\n")));
                        }
                        // A missing chain is an answer, not an error.
                        Err(KernelError::Failed { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Listing::parse(&text, table))
            }
        }
    }

    async fn chain_names(&mut self, family: IpFamily, table: Table) -> Result<Vec<String>, KernelError> {
        if self.flavour == Flavour::Nft {
            // `nft list chains` names chains without dumping rules (about
            // a second at 220,000 chains, where iptables-nft-save takes
            // minutes); without nft, fall back to the save.
            let fam = if family == IpFamily::V6 { "ip6" } else { "ip" };
            if let Ok(out) = self.run("nft", &["list", "chains", fam], None).await {
                return Ok(nft_chain_names(&out, fam, table.name()));
            }
        }
        Ok(Listing::parse(&self.save(family, table).await?, table).chains.into_keys().collect())
    }

    async fn digests(&mut self, family: IpFamily, table: Table, chains: Option<&[String]>) -> Result<Option<Digests>, KernelError> {
        if self.flavour != Flavour::Nft {
            return Ok(None);
        }
        // iptables-nft keeps each table as the nf_tables table of the
        // same name: read its rules over netlink.
        use kproxy_netfilter::nft_rules;
        let err = |e: kproxy_netfilter::NetlinkError| KernelError::Netlink(e.to_string());
        let mut socket = match &self.netns {
            Some(ns) => kproxy_netfilter::NfSocket::open_in_netns(ns, 1 << 16),
            None => kproxy_netfilter::NfSocket::open(1 << 16),
        }
        .map_err(err)?;
        let name = table.name();
        match chains {
            None => match nft_rules::table_digests(&mut socket, family, name) {
                Ok(d) => Ok(Some(d)),
                // No such table yet: no chains.
                Err(e) if e.0.contains("os error 2") => Ok(Some(Digests::new())),
                Err(e) => Err(err(e)),
            },
            Some(chains) => {
                let mut out = Digests::new();
                for c in chains {
                    if let Some(d) = nft_rules::chain_digest(&mut socket, family, name, c).map_err(err)? {
                        out.insert(c.clone(), d);
                    }
                }
                Ok(Some(out))
            }
        }
    }
}

/// The chains of `table` in `nft list chains FAMILY` output.
fn nft_chain_names(out: &str, family: &str, table: &str) -> Vec<String> {
    let header = format!("table {family} {table} {{");
    let mut inside = false;
    let mut names = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.starts_with("table ") {
            inside = line == header;
        } else if inside {
            if let Some(rest) = line.strip_prefix("chain ") {
                names.push(rest.trim_end_matches('{').trim().to_string());
            }
        }
    }
    names
}

/// What `iptables-save -t TABLE` shows of a table: each chain with its
/// rule count, and the rule lines of the built-in chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Every chain and its number of rules.
    pub chains: std::collections::BTreeMap<String, usize>,
    /// `-A BUILTIN ...` lines, as saved.
    pub builtin_rules: Vec<String>,
}

impl Listing {
    /// Whether this listing has `jump` in its built-in chain: matched on
    /// the chain, the comment and the target, as `iptables-save` may
    /// reorder and respell the rest.
    pub fn has(&self, jump: &Jump) -> bool {
        let comment = jump.rule.matches.iter().find_map(|m| match m {
            Match::Comment(c) => Some(c.as_str()),
            _ => None,
        });
        let Target::Jump(target) = &jump.rule.target else {
            return false;
        };
        self.builtin_rules.iter().any(|line| {
            line.starts_with(&format!("-A {} ", jump.from))
                && line.ends_with(&format!("-j {target}"))
                && comment.is_none_or(|c| line.contains(&format!("--comment \"{c}\"")) || line.contains(&format!("--comment {c}")))
        })
    }

    /// Keeps only the named chains.
    pub fn only(mut self, chains: &[&str]) -> Listing {
        self.chains.retain(|c, _| chains.contains(&c.as_str()));
        self.builtin_rules.retain(|l| l.split_whitespace().nth(1).is_some_and(|c| chains.contains(&c)));
        self
    }

    /// Reads `iptables-save` output for one table.
    pub fn parse(save: &str, table: Table) -> Listing {
        let mut l = Listing::default();
        for line in save.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    l.chains.entry(name.to_string()).or_insert(0);
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                *l.chains.entry(chain.to_string()).or_insert(0) += 1;
                if table.builtins().contains(&chain) {
                    l.builtin_rules.push(line.to_string());
                }
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_come_from_the_right_table() {
        let out = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\tchain KUBE-SERVICES {\n\t}\n}\ntable ip nat {\n\tchain KUBE-SVC-X {\n\t}\n}\n";
        assert_eq!(nft_chain_names(out, "ip", "filter"), ["INPUT", "KUBE-SERVICES"]);
        assert_eq!(nft_chain_names(out, "ip", "nat"), ["KUBE-SVC-X"]);
    }

    #[test]
    fn a_listing_keeps_only_what_was_asked() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n";
        let l = Listing::parse(save, Table::Nat).only(&["PREROUTING", "KUBE-SERVICES"]);
        assert_eq!(l.chains.into_iter().collect::<Vec<_>>(), [("KUBE-SERVICES".to_string(), 1), ("PREROUTING".to_string(), 1)]);
        assert_eq!(l.builtin_rules, ["-A PREROUTING -j KUBE-SERVICES"]);
    }
}
