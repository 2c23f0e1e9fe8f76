//! The kernel step: the only code that talks to nftables.
//!
//! [`NftKernel`], the default, sends set-element changes (almost every sync)
//! as netlink batches and structure (tables, chains, rules, set
//! declarations) as `nft -f` text, and lists tables and outlines over
//! netlink. `nft` 1.0.6 re-reads whole sets to delete one element and
//! fetches every element to list anything, which costs tens of
//! milliseconds to seconds at 10,000 services; netlink costs neither.
//! [`NftCli`] does everything through `nft` and is kept for `--check` and
//! as a reference.

pub(crate) mod encode;
mod netlink;
mod support;

pub use netlink::Netlink;
pub use support::{check_support, parse_kernel_release, parse_nft_version, MIN_KERNEL, MIN_NFT};

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use async_trait::async_trait;
use kproxy_core::IpFamily;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use std::net::IpAddr;

use crate::model::{family_keyword, Key, Ruleset};
use crate::names;
use crate::transaction::Transaction;

/// What can go wrong talking to nftables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// `nft` could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the input.
    #[error("nft failed ({status}): {message}")]
    Nft {
        /// Exit status.
        status: String,
        /// The first lines of its error output.
        message: String,
    },
    /// The fake kernel refused a transaction, as nft would.
    #[error("fake kernel: {0}")]
    Refused(String),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
}

/// A table's shape without its elements: enough to notice that someone
/// flushed, deleted or edited kproxy's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// Chains and their rule counts.
    pub chains: BTreeMap<String, usize>,
    /// Set and map names.
    pub sets: BTreeSet<String>,
    /// A digest of each chain's rules (`chain NAME`) and of each set's
    /// declaration (`set NAME`), as the kernel reports them: equal as
    /// long as nobody edited them. Only compared with a digest taken from
    /// the same kernel (empty where a kernel cannot say).
    pub digests: BTreeMap<String, u64>,
}

impl Outline {
    /// The outline a ruleset should have in the kernel (what the fake
    /// reports, digests included).
    pub fn of(ruleset: &Ruleset) -> Outline {
        let mut digests = BTreeMap::new();
        for (name, chain) in &ruleset.chains {
            digests.insert(format!("chain {name}"), digest(format!("{chain:?}")));
        }
        for (name, set) in &ruleset.sets {
            digests.insert(format!("set {name}"), digest(format!("{:?}", set.decl)));
        }
        Outline {
            chains: ruleset.chains.iter().map(|(n, c)| (n.clone(), c.rules.len())).collect(),
            sets: ruleset.sets.keys().cloned().collect(),
            digests,
        }
    }

    /// The same outline without digests (what a ruleset alone predicts).
    pub fn shape(&self) -> (&BTreeMap<String, usize>, &BTreeSet<String>) {
        (&self.chains, &self.sets)
    }
}

/// A stable digest of bytes (FNV-1a: no key, the same in every process).
pub(crate) fn digest(bytes: impl AsRef<[u8]>) -> u64 {
    bytes.as_ref().iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// One set element as the kernel holds it: key bytes, the end of an
/// interval key, and a map's data bytes.
pub type RawElement = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

/// The digest of one element in the kernel's layout. A set's elements are
/// summed (wrapping), so the sum does not depend on their order.
pub fn element_digest(key: &[u8], key_end: Option<&[u8]>, data: Option<&[u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in (bytes.len() as u32).to_le_bytes().iter().chain(bytes) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    feed(key);
    feed(key_end.unwrap_or(&[0xff]));
    feed(data.unwrap_or(&[0xff]));
    h
}

/// The element count and digest sum of `elements` (what
/// [`Kernel::element_digest`] must report for a set holding them).
pub fn elements_digest<'a>(elements: impl IntoIterator<Item = (&'a Key, Option<&'a crate::model::Value>)>) -> (usize, u64) {
    elements.into_iter().fold((0, 0u64), |(n, sum), (k, v)| {
        let (key, end) = encode::key(k);
        let data = v.map(encode::data);
        (n + 1, sum.wrapping_add(element_digest(&key, end.as_deref(), data.as_deref())))
    })
}

/// Where rules go: the real kernel through `nft`, or a fake.
#[async_trait]
pub trait Kernel: Send {
    /// Applies one transaction atomically.
    async fn apply(&mut self, tx: &Transaction) -> Result<(), KernelError>;
    /// The kproxy tables of `family` that exist.
    async fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError>;
    /// The outline of one table, or `None` when it does not exist.
    async fn outline(&mut self, family: IpFamily, table: &str) -> Result<Option<Outline>, KernelError>;
    /// The entries of the dynamic affinity map: key and remembered target.
    async fn affinity_entries(&mut self, family: IpFamily, table: &str) -> Result<Vec<(Key, IpAddr, u16)>, KernelError>;
    /// The number of elements of one set or map and the sum of their
    /// digests ([`elements_digest`]), to check that nobody changed them;
    /// `None` when this kernel cannot read elements cheaply (then only
    /// the outline is checked).
    async fn element_digest(&mut self, _family: IpFamily, _table: &str, _set: &str) -> Result<Option<(usize, u64)>, KernelError> {
        Ok(None)
    }
    /// How many of `keys` one set or map holds and the sum of their
    /// digests as it holds them (data included): a check of a large map
    /// that costs what the keys cost. `None` when this kernel cannot.
    async fn lookup_digest(&mut self, _family: IpFamily, _table: &str, _set: &str, _keys: &[Key]) -> Result<Option<(usize, u64)>, KernelError> {
        Ok(None)
    }
}

/// The real kernel, through the `nft` binary, optionally inside a network
/// namespace (`ip netns exec NAME nft ...`), which is how tests run it.
#[derive(Debug, Clone)]
pub struct NftCli {
    prefix: Vec<String>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli::new()
    }
}

impl NftCli {
    /// `nft` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        NftCli { prefix: vec!["nft".into()] }
    }

    /// `nft` inside the named network namespace.
    pub fn in_netns(netns: &str) -> Self {
        NftCli {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), netns.into(), "nft".into()],
        }
    }

    /// Deletes the table `name` of `family` if it exists (another
    /// program's, such as upstream kube-proxy's `kube-proxy`); says
    /// whether it existed.
    pub async fn delete_table_if_present(&self, family: IpFamily, name: &str) -> Result<bool, KernelError> {
        let keyword = family_keyword(family);
        let listed = self.run(&["list", "tables", keyword], None).await?;
        if !listed.lines().any(|l| l.trim() == format!("table {keyword} {name}")) {
            return Ok(false);
        }
        self.run(&["delete", "table", keyword, name], None).await?;
        Ok(true)
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
        let mut cmd = Command::new(&self.prefix[0]);
        cmd.args(&self.prefix[1..]).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| KernelError::Spawn { program: self.prefix.join(" "), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.map_err(spawn_err)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.lines().take(3).collect::<Vec<_>>().join(" | ");
            return Err(KernelError::Nft { status: out.status.to_string(), message });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Checks a transaction without applying it (`nft --check`).
    pub async fn check(&self, tx: &Transaction) -> Result<(), KernelError> {
        self.run(&["--check", "-f", "-"], Some(&tx.to_nft())).await.map(|_| ())
    }
}

#[async_trait]
impl Kernel for NftCli {
    async fn apply(&mut self, tx: &Transaction) -> Result<(), KernelError> {
        if tx.is_empty() {
            return Ok(());
        }
        self.run(&["-f", "-"], Some(&tx.to_nft())).await.map(|_| ())
    }

    async fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        let fam = family_keyword(family);
        let out = self.run(&["list", "tables", fam], None).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table ")?.strip_prefix(fam)?.strip_prefix(' ').map(str::to_string))
            .filter(|name| names::TABLES.contains(&name.as_str()))
            .collect())
    }

    async fn outline(&mut self, family: IpFamily, table: &str) -> Result<Option<Outline>, KernelError> {
        if !self.tables(family).await?.iter().any(|t| t == table) {
            return Ok(None);
        }
        let out = self.run(&["-t", "list", "table", family_keyword(family), table], None).await?;
        Ok(Some(parse_outline(&out)))
    }

    /// Not read through `nft` (it would list every element of the table);
    /// [`NftKernel`] reads the map over netlink.
    async fn affinity_entries(&mut self, _family: IpFamily, _table: &str) -> Result<Vec<(Key, IpAddr, u16)>, KernelError> {
        Ok(Vec::new())
    }
}

/// Parses `nft -t list table` output into an outline.
pub fn parse_outline(listing: &str) -> Outline {
    let mut outline = Outline::default();
    let mut current: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ").and_then(|l| l.strip_suffix(" {")) {
            outline.chains.insert(name.to_string(), 0);
            current = Some(name.to_string());
        } else if let Some(name) = line.strip_prefix("set ").or_else(|| line.strip_prefix("map ")).and_then(|l| l.strip_suffix(" {")) {
            outline.sets.insert(name.to_string());
            current = None;
        } else if line == "}" {
            current = None;
        } else if let Some(chain) = &current {
            if !line.is_empty() {
                let d = outline.digests.entry(format!("chain {chain}")).or_insert(0);
                *d = digest(format!("{d}{line}"));
            }
            if !line.is_empty() && !line.starts_with("type ") {
                *outline.chains.get_mut(chain).expect("inserted above") += 1;
            }
        }
    }
    outline
}

/// The default kernel step: netlink for elements and listings, `nft` for
/// structure.
#[derive(Debug)]
pub struct NftKernel {
    cli: NftCli,
    netlink: Netlink,
}

impl NftKernel {
    /// For the caller's network namespace.
    pub fn new() -> Result<NftKernel, KernelError> {
        Ok(NftKernel { cli: NftCli::new(), netlink: Netlink::open()? })
    }

    /// For the named network namespace (tests).
    pub fn in_netns(netns: &str) -> Result<NftKernel, KernelError> {
        Ok(NftKernel { cli: NftCli::in_netns(netns), netlink: Netlink::open_in_netns(netns)? })
    }

    /// Checks a transaction with `nft --check`.
    pub async fn check(&self, tx: &Transaction) -> Result<(), KernelError> {
        self.cli.check(tx).await
    }
}

/// Splits a transaction into consecutive runs that are all element changes
/// or all structure, keeping their order.
fn runs(tx: &Transaction) -> Vec<Transaction> {
    let mut out: Vec<(bool, Transaction)> = Vec::new();
    for cmd in &tx.commands {
        let elements = matches!(cmd.op, crate::transaction::Op::AddElements { .. } | crate::transaction::Op::DeleteElements { .. });
        match out.last_mut() {
            Some((kind, run)) if *kind == elements => run.commands.push(cmd.clone()),
            _ => {
                let mut run = Transaction::new(tx.family);
                run.commands.push(cmd.clone());
                out.push((elements, run));
            }
        }
    }
    out.into_iter().map(|(_, t)| t).collect()
}

#[async_trait]
impl Kernel for NftKernel {
    /// Atomic when the transaction is all elements or all structure; a
    /// mixed one is applied run by run (the proxier treats a failure part
    /// way as drift and rebuilds).
    async fn apply(&mut self, tx: &Transaction) -> Result<(), KernelError> {
        for run in runs(tx) {
            if Netlink::handles(&run) {
                self.netlink.apply_elements(&run)?;
            } else {
                self.cli.apply(&run).await?;
            }
        }
        Ok(())
    }

    async fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        Ok(self.netlink.tables(family)?.into_iter().filter(|n| names::TABLES.contains(&n.as_str())).collect())
    }

    async fn outline(&mut self, family: IpFamily, table: &str) -> Result<Option<Outline>, KernelError> {
        if !self.netlink.tables(family)?.iter().any(|t| t == table) {
            return Ok(None);
        }
        self.netlink.outline(family, table).map(Some)
    }

    async fn affinity_entries(&mut self, family: IpFamily, table: &str) -> Result<Vec<(Key, IpAddr, u16)>, KernelError> {
        let v6 = family == IpFamily::V6;
        Ok(self
            .netlink
            .set_elements(family, table, names::AFFINITY)?
            .into_iter()
            .filter_map(|(key, _, data)| encode::decode_affinity(v6, &key, &data?))
            .collect())
    }

    async fn element_digest(&mut self, family: IpFamily, table: &str, set: &str) -> Result<Option<(usize, u64)>, KernelError> {
        Ok(Some(self.netlink.set_digest(family, table, set)?))
    }

    async fn lookup_digest(&mut self, family: IpFamily, table: &str, set: &str, keys: &[Key]) -> Result<Option<(usize, u64)>, KernelError> {
        Ok(Some(self.netlink.lookup_digest(family, table, set, keys)?))
    }
}
