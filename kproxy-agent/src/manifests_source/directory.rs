//! Standalone mode's cluster state: a directory of YAML manifests, read so
//! that no file can break it, and kept small.
//!
//! - Each `*.yaml`/`*.yml` file holds documents separated by `---`; each
//!   document is parsed on its own ([`super::read`]), so a bad one (a
//!   wrong type, broken YAML, a file cut off mid-write) costs only itself.
//!   While a file has a problem, the objects it held keep their last good
//!   state: a half-written file never withdraws anything.
//! - Files that are not regular files (FIFOs, devices, also behind a
//!   symlink) and files over [`super::MAX_FILE_BYTES`] are skipped with
//!   one message; their objects keep their last state too.
//! - `kind: List` documents are read item by item. Kinds kproxy does not
//!   read, and an object defined in two files (the later file's wins), are
//!   reported.
//! - [`Directory`] re-parses only files whose size, time or inode changed,
//!   and keeps their merge up to date one changed file at a time, so a
//!   rewritten file costs its own objects, however large the directory.
//! - It keeps no Service or EndpointSlice once handed over: only a hash
//!   of each (equal objects, equal hashes) and whether upstream's label
//!   selector lets it through. The proxiers hold the state; an object
//!   whose file was not read again (a duplicate whose other file dropped
//!   it) is read again from its file when it is handed over. Nodes and
//!   ServiceCIDRs, few and read for their fields, are kept whole.
//! - Changes are handed over in batches of whole files, about a thousand
//!   objects each ([`Directory::next_batch`]), so the first read of a
//!   large directory never holds every object at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy_core::runner::Update;
use smallvec::SmallVec;

use super::read::{in_both, manifest_files, not_regular, read_file, FileRead, Manifests};
use crate::selector::is_proxied;

/// An object's kind and namespace/name (a Node's or ServiceCIDR's name).
pub(crate) type ObjectKey = (&'static str, String);

/// What the directory keeps of one object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Held {
    /// A Service or an EndpointSlice: a hash of its JSON form, and whether
    /// upstream's label selector lets it through.
    Print {
        /// The hash.
        hash: u64,
        /// Whether kproxy proxies it.
        proxied: bool,
    },
    /// A Node, whole.
    Node(Arc<Node>),
    /// A ServiceCIDR, whole.
    Cidr(Arc<ServiceCIDR>),
}

/// A Service or EndpointSlice as read, until it is handed over.
#[derive(Debug)]
enum Typed {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
}

/// Objects as kept, by kind and name.
type Objects = BTreeMap<ObjectKey, Held>;

/// How many objects each file has to hand over.
type Plan = BTreeMap<Arc<Path>, usize>;

/// Typed Services and slices by kind and name, with their hashes.
type Fresh = HashMap<ObjectKey, (u64, Typed)>;

/// A file's objects as kept, and its Services and slices as read.
fn index(m: Manifests) -> (Objects, Fresh) {
    let mut held = Objects::new();
    let mut typed = Fresh::new();
    for (k, s) in m.services {
        let hash = hash_of(&*s);
        held.insert(("Service", k.clone()), Held::Print { hash, proxied: is_proxied(s.metadata.labels.as_ref()) });
        typed.insert(("Service", k), (hash, Typed::Service(s)));
    }
    for (k, s) in m.slices {
        let hash = hash_of(&*s);
        held.insert(("EndpointSlice", k.clone()), Held::Print { hash, proxied: is_proxied(s.metadata.labels.as_ref()) });
        typed.insert(("EndpointSlice", k), (hash, Typed::Slice(s)));
    }
    held.extend(m.nodes.into_iter().map(|(k, n)| (("Node", k), Held::Node(n))));
    held.extend(m.service_cidrs.into_iter().map(|(k, c)| (("ServiceCIDR", k), Held::Cidr(c))));
    (held, typed)
}

/// A hash of `o`'s JSON form: two objects that compare equal have equal
/// hashes (a collision, one in 2^64, would hide a change).
fn hash_of<T: serde::Serialize>(o: &T) -> u64 {
    struct Writer(std::hash::DefaultHasher);
    impl std::io::Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Writer(std::hash::DefaultHasher::new());
    // Kubernetes objects always serialize (string map keys only).
    let _ = serde_json::to_writer(&mut w, o);
    w.0.finish()
}

/// An object with just the namespace and name of `key` (`namespace/name`):
/// what a deletion or a previous state carries.
fn named<K: kube::Resource + Default>(key: &str) -> Arc<K> {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    let mut o = K::default();
    let meta = o.meta_mut();
    meta.namespace = Some(namespace.to_string());
    meta.name = Some(name.to_string());
    Arc::new(o)
}

/// What identifies a file's content without reading it.
type Stamp = (u64, i64, i64, u64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino())
}

/// How long a file must have gone unmodified before the objects it no
/// longer holds are withdrawn: a writer that pauses mid-file (or a reader
/// woken twice while a file is still empty) withdraws nothing.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Whether the file was last modified at least [`SETTLE`] ago (or, with
/// a clock that disagrees, in the future: a time that says nothing).
fn settled(meta: &std::fs::Metadata) -> bool {
    meta.modified().ok().and_then(|m| m.elapsed().ok()).is_none_or(|age| age >= SETTLE)
}

/// One file as last read (its objects are in [`Directory`]'s map).
#[derive(Debug, Clone)]
struct FileState {
    path: Arc<Path>,
    stamp: Stamp,
    /// How many objects the file held before and not now, kept until the
    /// file reads the same twice in a row without a problem and has gone
    /// [`SETTLE`] unmodified (a writer may be half-way through it).
    kept: usize,
    problems: Vec<String>,
    partial: bool,
    /// The text hashes of its documents that read without a problem: on
    /// the next read, a document with one of them is not parsed again.
    clean: HashSet<u64>,
    /// Whether it holds an object twice: its next read parses every
    /// document (which one wins depends on their order).
    duplicated: bool,
}

/// One file's version of an object.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    file: Arc<Path>,
    held: Held,
    /// The file held it on an earlier read and not now (see
    /// [`FileState::kept`]).
    kept: bool,
    /// The text hash of the document it came from.
    doc: u64,
}

/// Whether two paths are the same (compared as bytes, not component by
/// component).
fn same_file(a: &Path, b: &Path) -> bool {
    a.as_os_str() == b.as_os_str()
}

/// The files holding one object, in path order (the last one's is used):
/// one, nearly always, kept without a separate allocation.
type Owners = SmallVec<[Owned; 1]>;

/// A manifests directory as last read: one map of every object with the
/// files that hold it, kept up to date one changed file at a time.
#[derive(Debug, Default)]
pub struct Directory {
    files: BTreeMap<PathBuf, FileState>,
    objects: BTreeMap<ObjectKey, Owners>,
    /// The objects the reads may have changed since they were last
    /// handed over, and their merged state then (absent when they were).
    touched: BTreeSet<ObjectKey>,
    before: Objects,
    /// Touched objects whose file could not give them again (changed
    /// since, or with a problem): tried again after the next change.
    retry: BTreeSet<ObjectKey>,
    /// Services and slices read since the last hand-over that differ from
    /// what was handed over, by file: handed over without reading the
    /// file again.
    fresh: BTreeMap<PathBuf, Fresh>,
    /// The touched objects that need their file, by file (built by the
    /// first [`Directory::next_batch`] after a read).
    plan: Option<Plan>,
}

/// About how many objects a batch hands over: files are taken whole until
/// a batch holds this many (a directory of one object per file is not
/// handed over one object at a time). Two in tests, so that they see
/// batches of several files.
#[cfg(not(test))]
const BATCH: usize = 1000;
#[cfg(test)]
const BATCH: usize = 2;

impl Directory {
    /// Reads `dir` for the first time, keeping no Service or slice (the
    /// batches read each file again, one at a time). Returns one message
    /// per problem (bad documents, skipped files, unsupported kinds,
    /// objects in two files); everything read is to be handed over
    /// ([`Directory::next_batch`]).
    pub fn load(&mut self, dir: &Path) -> Result<Vec<String>, String> {
        let (_, mut problems) = self.read(dir, false)?;
        problems.extend(self.duplicates());
        Ok(problems)
    }

    /// Whether a file keeps objects it no longer holds until it settles
    /// (caught half-written or just emptied): only a later read, with no
    /// file event to wake it, withdraws them.
    pub fn unsettled(&self) -> bool {
        self.files.values().any(|f| f.kept > 0)
    }

    /// Reads `dir` again, re-parsing only the files that changed: says
    /// whether any object may have changed (a file re-read, added or gone,
    /// or a half-written file's kept objects withdrawn), and every file's
    /// problems. Nothing changed means nothing to hand over, so polling a
    /// large, quiet directory costs a `stat` per file. An object leaves
    /// only once its file reads the same, without a problem, on two reads
    /// in a row, and has gone [`SETTLE`] unmodified: a file caught
    /// half-written withdraws nothing.
    pub fn refresh(&mut self, dir: &Path) -> Result<(bool, Vec<String>), String> {
        self.read(dir, true)
    }

    fn read(&mut self, dir: &Path, keep_read: bool) -> Result<(bool, Vec<String>), String> {
        let paths = manifest_files(dir)?;
        // What the next batches need changes with what is read.
        self.plan = None;
        let mut problems = Vec::new();
        let mut files = BTreeMap::new();
        let mut changed = false;
        for path in paths {
            let previous = self.files.remove(&path);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    // Gone between the listing and now: its objects go.
                    if let Some(p) = previous {
                        self.forget(&p.path);
                        changed = true;
                    }
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(not_regular(&path));
                if let Some(p) = previous {
                    files.insert(path, p);
                }
                continue;
            }
            let now = stamp(&meta);
            let state = match previous {
                // Unchanged: settled, unless it still has a problem.
                Some(mut p) if p.stamp == now => {
                    if !p.partial && p.kept > 0 && settled(&meta) {
                        self.settle(&p.path);
                        p.kept = 0;
                        changed = true;
                    }
                    p
                }
                previous => {
                    // Documents whose text has not changed are not parsed,
                    // unless an object is in two documents: then the
                    // later one wins, and only a whole read says which.
                    let skip = previous.as_ref().filter(|p| !p.duplicated);
                    let mut read = read_file(&path, &|h| skip.is_some_and(|p| p.clean.contains(&h)));
                    if skip.is_some() && self.in_unread_document(&path, &read) {
                        read = read_file(&path, &|_| false);
                    }
                    let FileRead { objects, problems: found, partial, clean, origin, duplicated, .. } = read;
                    let (parsed, mut typed) = index(objects);
                    if keep_read {
                        typed.retain(|k, (hash, _)| !matches!(self.handed(k), Some(Held::Print { hash: h, .. }) if h == hash));
                        if !typed.is_empty() {
                            self.fresh.insert(path.clone(), typed);
                        }
                    }
                    let known = previous.is_some();
                    let file = previous.map_or_else(|| Arc::from(path.as_path()), |p| p.path);
                    let kept = self.replace(&file, known, parsed, &origin, &clean);
                    changed = true;
                    FileState { path: file, stamp: now, kept, problems: found, partial, clean, duplicated }
                }
            };
            problems.extend(state.problems.iter().cloned());
            files.insert(path, state);
        }
        // Files gone since the last read.
        for (_, state) in std::mem::take(&mut self.files) {
            self.forget(&state.path);
            changed = true;
        }
        self.files = files;
        if changed {
            // Objects a file could not give again: their files may have
            // been fixed.
            for k in std::mem::take(&mut self.retry) {
                self.touched.insert(k);
            }
        }
        Ok((changed, problems))
    }

    /// The state of `k` the proxiers were last given.
    fn handed(&self, k: &ObjectKey) -> Option<&Held> {
        if self.touched.contains(k) || self.retry.contains(k) {
            self.before.get(k)
        } else {
            self.merged(k)
        }
    }

    /// The merged state of `k`: its last file's.
    fn merged(&self, k: &ObjectKey) -> Option<&Held> {
        self.objects.get(k).and_then(|o| o.last()).map(|o| &o.held)
    }

    /// Whether an object `read` parsed is also held by one of `file`'s
    /// documents it did not parse (unchanged): an object now in two
    /// documents.
    fn in_unread_document(&self, file: &Path, read: &FileRead) -> bool {
        read.origin.iter().any(|(k, doc)| {
            self.owned(k, file).is_some_and(|o| !o.kept && o.doc != *doc && read.clean.contains(&o.doc))
        })
    }

    /// `file`'s version of `k`.
    fn owned(&self, k: &ObjectKey, file: &Path) -> Option<&Owned> {
        self.objects.get(k)?.iter().find(|o| same_file(&o.file, file))
    }

    /// The keys of the objects `file` holds (or keeps): a walk over every
    /// object, comparing paths as bytes.
    fn keys_of(&self, file: &Path) -> Vec<ObjectKey> {
        self.objects.iter().filter(|(_, o)| o.iter().any(|x| same_file(&x.file, file))).map(|(k, _)| k.clone()).collect()
    }

    /// Records `k`'s state before its first change since it was handed
    /// over.
    fn touch(&mut self, k: &ObjectKey) {
        if !self.touched.contains(k) && !self.retry.contains(k) {
            if let Some(h) = self.merged(k).cloned() {
                self.before.insert(k.clone(), h);
            }
            self.touched.insert(k.clone());
        }
    }

    /// Sets `file`'s version of `k` (`None`: it has none): its state,
    /// whether it is kept, and its document's text hash.
    fn set(&mut self, k: ObjectKey, file: &Arc<Path>, version: Option<(Held, bool, u64)>) {
        let unchanged = match (self.owned(&k, file), &version) {
            (Some(x), Some((held, kept, doc))) => x.held == *held && x.kept == *kept && x.doc == *doc,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        self.touch(&k);
        let owners = match self.objects.get_mut(&k) {
            Some(o) => o,
            None => self.objects.entry(k.clone()).or_default(),
        };
        // All files are in one directory: their paths order as their names.
        let at = owners.binary_search_by(|o| o.file.as_os_str().cmp(file.as_os_str()));
        match (at, version) {
            (Ok(i), Some((held, kept, doc))) => owners[i] = Owned { file: Arc::clone(file), held, kept, doc },
            (Err(i), Some((held, kept, doc))) => owners.insert(i, Owned { file: Arc::clone(file), held, kept, doc }),
            (Ok(i), None) => drop(owners.remove(i)),
            (Err(_), None) => {}
        }
        if owners.is_empty() {
            self.objects.remove(&k);
        }
    }

    /// `file` read again: `parsed` from the documents read (`origin` says
    /// which document each came from), none from the unchanged documents
    /// (in `clean` and not read). What it held before and not now is
    /// kept. Returns how many objects are kept. A new file (not `known`)
    /// held nothing before: no walk over the objects for it.
    fn replace(&mut self, file: &Arc<Path>, known: bool, parsed: Objects, origin: &HashMap<ObjectKey, u64>, clean: &HashSet<u64>) -> usize {
        let mut kept = 0;
        let before = if known { self.keys_of(file) } else { Vec::new() };
        for k in before {
            if parsed.contains_key(&k) {
                continue;
            }
            let Some(o) = self.owned(&k, file).cloned() else { continue };
            // Held by a document that has not changed (and was not read).
            if !o.kept && clean.contains(&o.doc) {
                continue;
            }
            self.set(k, file, Some((o.held, true, o.doc)));
            kept += 1;
        }
        for (k, held) in parsed {
            let doc = origin.get(&k).copied().unwrap_or_default();
            self.set(k, file, Some((held, false, doc)));
        }
        kept
    }

    /// Withdraws the objects `file` keeps but no longer holds.
    fn settle(&mut self, file: &Arc<Path>) {
        for k in self.keys_of(file) {
            if self.owned(&k, file).is_some_and(|o| o.kept) {
                self.set(k, file, None);
            }
        }
    }

    /// Withdraws everything `file` held.
    fn forget(&mut self, file: &Arc<Path>) {
        for k in self.keys_of(file) {
            self.set(k, file, None);
        }
    }

    /// The file `k`'s change must be read from, and its hash: a proxied
    /// Service or slice that differs from what was handed over.
    fn needs_file(&self, k: &ObjectKey) -> Option<(&Arc<Path>, u64)> {
        match (self.before.get(k), self.objects.get(k).and_then(|o| o.last())) {
            (before, Some(Owned { file, held: now @ Held::Print { hash, proxied: true }, .. })) if before != Some(now) => Some((file, *hash)),
            _ => None,
        }
    }

    /// The next batch of updates that hand the changes of the reads so far
    /// to the proxiers: first every change that needs no file (deletions,
    /// Nodes), then the changed objects of whole files, in path order,
    /// about [`BATCH`] at a time; Services first, then slices, then Nodes
    /// within a batch; `None` when everything has been handed over. A
    /// file whose objects are not at hand is read again (once).
    pub fn next_batch(&mut self) -> Option<Vec<Update>> {
        let mut done: Vec<ObjectKey> = Vec::new();
        if self.plan.is_none() {
            // One pass over the touched objects: those that need no file
            // go in this batch, the others are counted by file.
            let mut plan = Plan::new();
            for k in &self.touched {
                match self.needs_file(k) {
                    Some((file, _)) => *plan.entry(Arc::clone(file)).or_default() += 1,
                    None => done.push(k.clone()),
                }
            }
            self.plan = Some(plan);
        }
        let mut chosen = BTreeSet::new();
        let mut size = 0;
        if let Some(plan) = self.plan.as_mut() {
            while size < BATCH {
                let Some((file, count)) = plan.pop_first() else { break };
                size += count;
                chosen.insert(file);
            }
        }
        if done.is_empty() && chosen.is_empty() {
            self.fresh.clear();
            self.plan = None;
            return None;
        }
        // A second pass for the chosen files' objects (keys are copied for
        // one batch only).
        let mut files: BTreeMap<Arc<Path>, Vec<(ObjectKey, u64)>> = BTreeMap::new();
        if !chosen.is_empty() {
            for k in &self.touched {
                if let Some((file, hash)) = self.needs_file(k).filter(|(f, _)| chosen.contains(*f)) {
                    files.entry(Arc::clone(file)).or_default().push((k.clone(), hash));
                }
            }
        }
        let mut out: Vec<(u8, Update)> = Vec::new();
        for k in done {
            self.touched.remove(&k);
            let before = self.before.remove(&k);
            let now = self.merged(&k);
            // Proxied before and not now (a proxied object that needs no
            // file is unchanged).
            let withdrawn = matches!(before, Some(Held::Print { proxied: true, .. })) && !matches!(now, Some(Held::Print { proxied: true, .. }));
            match (k.0, now) {
                ("Service", _) if withdrawn => out.push((0, Update::Service { previous: Some(named(&k.1)), current: None })),
                ("EndpointSlice", _) if withdrawn => out.push((1, Update::EndpointSlice { slice: named(&k.1), removed: true })),
                ("Node", Some(Held::Node(n))) if before.as_ref() != now => out.push((2, Update::Node(Arc::clone(n)))),
                _ => {}
            }
        }
        for (path, wanted) in files {
            let mut fresh = self.fresh.remove(&*path).unwrap_or_default();
            let mut again: Option<Fresh> = None;
            for (k, hash) in wanted {
                let read = match fresh.remove(&k) {
                    Some((h, typed)) if h == hash => Some(typed),
                    _ => {
                        let again = again.get_or_insert_with(|| index(read_file(&path, &|_| false).objects).1);
                        again.remove(&k).filter(|(h, _)| *h == hash).map(|(_, typed)| typed)
                    }
                };
                self.touched.remove(&k);
                let Some(typed) = read else {
                    tracing::warn!("{} {}: its state in {} could not be read again; it is handed over after the next change", k.0, k.1, path.display());
                    self.retry.insert(k);
                    continue;
                };
                let before = self.before.remove(&k);
                let previous = matches!(before, Some(Held::Print { proxied: true, .. })).then(|| named(&k.1));
                out.push(match typed {
                    Typed::Service(s) => (0, Update::Service { previous, current: Some(s) }),
                    Typed::Slice(s) => (1, Update::EndpointSlice { slice: s, removed: false }),
                });
            }
        }
        out.sort_by_key(|(order, _)| *order);
        Some(out.into_iter().map(|(_, u)| u).collect())
    }

    /// The Node `name` as the files have it.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        match self.merged(&("Node", name.to_string())) {
            Some(Held::Node(n)) => Some(Arc::clone(n)),
            _ => None,
        }
    }

    /// Every range of every ServiceCIDR, sorted (see
    /// [`crate::service_cidrs`]); ranges were checked when read.
    pub fn service_cidr_ranges(&self) -> Vec<ipnet::IpNet> {
        let mut all = crate::service_cidrs::ServiceCidrs::default();
        for k in self.objects.keys().filter(|k| k.0 == "ServiceCIDR") {
            if let Some(Held::Cidr(c)) = self.merged(k) {
                all.upsert(c);
            }
        }
        all.union()
    }

    /// The namespace/names (or names) of the objects of `kind`, sorted.
    pub fn names(&self, kind: &str) -> Vec<&str> {
        self.objects.keys().filter(|k| k.0 == kind).map(|k| k.1.as_str()).collect()
    }

    /// One message per object found in two files (the later file's is
    /// used), as of the last refresh.
    pub fn duplicates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, owners) in self.objects.iter().filter(|(_, o)| o.len() > 1) {
            for pair in owners.windows(2) {
                out.push(in_both(k, &pair[0].file, &pair[1].file));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";
    const API: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n  - port: 80\n";

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kproxy-manifests-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes `path` whole, settled: modified long enough ago that a
    /// second read of it may withdraw what it no longer holds.
    fn write(path: &Path, text: &str) {
        write_at(path, text, std::time::SystemTime::now() - 2 * SETTLE);
    }

    fn write_at(path: &Path, text: &str, modified: std::time::SystemTime) {
        // A new inode each time, as editors and ConfigMap updates do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(modified).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Reads `d` again: the number of Services, and every problem.
    fn reread(directory: &mut Directory, d: &Path) -> (usize, Vec<String>) {
        let (_, mut problems) = directory.refresh(d).unwrap();
        problems.extend(directory.duplicates());
        (directory.names("Service").len(), problems)
    }

    /// Every batch until the changes are handed over.
    fn batches(directory: &mut Directory) -> Vec<Vec<Update>> {
        std::iter::from_fn(|| directory.next_batch()).collect()
    }

    /// A Service update's current clusterIP, or "gone".
    fn cluster_ip(u: &Update) -> String {
        match u {
            Update::Service { current: Some(s), .. } => s.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default(),
            Update::Service { current: None, .. } => "gone".into(),
            other => format!("{other:?}"),
        }
    }

    /// A file just emptied (a writer that truncated it and has not written
    /// yet) withdraws nothing however often it is read; once it has gone
    /// [`SETTLE`] unmodified, its objects leave.
    #[test]
    fn a_file_just_emptied_withdraws_nothing_until_it_settles() {
        let d = dir("settle");
        let a = d.join("a.yaml");
        write(&a, &format!("{WEB}---\n{API}"));
        let mut directory = Directory::default();
        directory.refresh(&d).unwrap();
        assert!(!directory.unsettled());
        write_at(&a, "", std::time::SystemTime::now());
        for _ in 0..3 {
            directory.refresh(&d).unwrap();
            assert_eq!(directory.names("Service").len(), 2, "a fresh empty file withdraws nothing");
            assert!(directory.unsettled(), "so the source keeps looking every second");
        }
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(std::time::SystemTime::now() - 2 * SETTLE).unwrap();
        directory.refresh(&d).unwrap();
        directory.refresh(&d).unwrap();
        assert!(directory.names("Service").is_empty(), "settled: withdrawn");
        assert!(!directory.unsettled());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A refresh says whether the objects changed, so the poll of a large,
    /// quiet directory costs a `stat` per file: a file
    /// written, a Service withdrawn once its file settles, a file removed
    /// are changes; reading the same files again is not.
    #[test]
    fn a_refresh_says_whether_anything_changed() {
        let d = dir("refresh");
        let (a, b) = (d.join("a.yaml"), d.join("b.yaml"));
        write(&a, &format!("{WEB}---\n{API}"));
        write(&b, &API.replace("name: api", "name: other"));
        let mut directory = Directory::default();
        assert!(directory.refresh(&d).unwrap().0, "first read");
        assert_eq!(directory.names("Service").len(), 3);
        assert!(!directory.refresh(&d).unwrap().0, "the same files");
        write(&a, WEB);
        assert!(directory.refresh(&d).unwrap().0, "a written");
        assert_eq!(directory.names("Service").len(), 3, "api is kept until a.yaml settles");
        assert!(directory.refresh(&d).unwrap().0, "settled: api withdrawn");
        assert_eq!(directory.names("Service").len(), 2);
        assert!(!directory.refresh(&d).unwrap().0);
        std::fs::remove_file(&b).unwrap();
        assert!(directory.refresh(&d).unwrap().0, "b removed");
        assert_eq!(directory.names("Service"), ["demo/web"]);
        assert!(!directory.refresh(&d).unwrap().0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_document_costs_only_itself_and_a_half_written_file_withdraws_nothing() {
        let d = dir("bad-doc");
        let file = d.join("a.yaml");
        write(&file, &format!("{WEB}---\n{API}"));
        let mut directory = Directory::default();
        let problems = directory.load(&d).unwrap();
        assert_eq!(directory.names("Service").len(), 2, "{problems:?}");
        // A wrong type in one document: the other still counts, and the bad
        // one keeps its last good state.
        write(&file, &format!("{WEB}---\n{}", API.replace("port: 80", "port: eighty")));
        let (services, problems) = reread(&mut directory, &d);
        assert_eq!(services, 2, "the bad document's Service keeps its last state");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a.yaml: document at line 11") && problems[0].contains("Service demo/api"), "{problems:?}");
        // Cut off mid-write: nothing is withdrawn.
        let full = format!("{WEB}---\n{API}");
        write(&file, &full[..full.len() / 3]);
        assert_eq!(reread(&mut directory, &d).0, 2);
        // Fixed, and one Service deliberately removed: it goes once the
        // file reads the same twice (a writer may still be at work).
        write(&file, WEB);
        assert_eq!(reread(&mut directory, &d), (2, Vec::new()));
        assert_eq!(reread(&mut directory, &d), (1, Vec::new()));
        // Emptied: the same.
        write(&file, "");
        assert_eq!(reread(&mut directory, &d).0, 1, "not yet");
        assert_eq!(reread(&mut directory, &d).0, 0, "settled");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn special_huge_unknown_and_duplicate_files_are_reported() {
        let d = dir("special");
        write(&d.join("a.yaml"), WEB);
        let api = serde_json::to_string(&super::super::read::parse_yaml(API).unwrap()).unwrap();
        write(&d.join("b.yaml"), &format!("{WEB}---\nkind: Endpoints\nmetadata:\n  name: x\n---\nkind: List\nitems:\n- {api}\n"));
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(d.join("fifo.yaml")).status().unwrap().success());
        let mut directory = Directory::default();
        let problems = directory.load(&d).unwrap();
        assert_eq!(directory.names("Service"), ["demo/api", "demo/web"], "a List's items count: {problems:?}");
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(has("kind Endpoints is not read by kproxy"), "{problems:?}");
        assert!(has("zero.yaml: not a regular file") && has("fifo.yaml: not a regular file"), "{problems:?}");
        assert!(has("Service demo/web is in both"), "{problems:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn thousands_of_documents_in_one_file_are_read() {
        let d = dir("many");
        let text: Vec<String> = (0..5000).map(|i| WEB.replace("name: web", &format!("name: web{i}")).replace("10.96.0.10", &format!("10.96.{}.{}", i / 250, i % 250 + 1))).collect();
        write(&d.join("a.yaml"), &text.join("---\n"));
        let mut directory = Directory::default();
        let problems = directory.load(&d).unwrap();
        assert_eq!(directory.names("Service").len(), 5000, "{problems:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The first read keeps no Service: its batches read each file again,
    /// one file's objects per batch; afterwards only the objects that
    /// changed are handed over, with their previous state as a skeleton,
    /// and nothing typed stays behind.
    #[test]
    fn changes_are_handed_over_one_file_at_a_time_and_nothing_typed_is_kept() {
        let d = dir("batches");
        write(&d.join("a.yaml"), &format!("{WEB}---\n{API}"));
        write(&d.join("b.yaml"), &API.replace("name: api", "name: other").replace("10.96.0.20", "10.96.0.30"));
        let mut directory = Directory::default();
        directory.load(&d).unwrap();
        assert!(directory.fresh.is_empty(), "the first read keeps nothing typed");
        let first = batches(&mut directory);
        let ips: Vec<Vec<String>> = first.iter().map(|b| b.iter().map(cluster_ip).collect()).collect();
        assert_eq!(ips, [vec!["10.96.0.20", "10.96.0.10"], vec!["10.96.0.30"]], "a.yaml's two, then b.yaml's one");
        assert!(directory.next_batch().is_none());
        // One Service of a.yaml changed, another withdrawn (once settled).
        write(&d.join("a.yaml"), &WEB.replace("80", "8080"));
        assert!(directory.refresh(&d).unwrap().0);
        let changed = batches(&mut directory);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(matches!(&changed[0][..], [Update::Service { previous: Some(p), current: Some(s) }] if p.spec.is_none() && s.metadata.name.as_deref() == Some("web")), "{changed:?}");
        assert!(directory.fresh.is_empty());
        directory.refresh(&d).unwrap();
        let gone = batches(&mut directory);
        assert!(matches!(&gone[..], [b] if matches!(&b[..], [Update::Service { previous: Some(p), current: None }] if p.metadata.name.as_deref() == Some("api"))), "{gone:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A directory of one object per file is handed over several files a
    /// batch (about [`BATCH`] objects), each file whole, in path order.
    #[test]
    fn small_files_share_a_batch() {
        let d = dir("small-files");
        for i in 0..5 {
            write(&d.join(format!("{i}.yaml")), &WEB.replace("name: web", &format!("name: web{i}")).replace("10.96.0.10", &format!("10.96.0.{i}")));
        }
        let mut directory = Directory::default();
        directory.load(&d).unwrap();
        let sizes: Vec<Vec<String>> = batches(&mut directory).iter().map(|b| b.iter().map(cluster_ip).collect()).collect();
        assert_eq!(sizes, [vec!["10.96.0.0", "10.96.0.1"], vec!["10.96.0.2", "10.96.0.3"], vec!["10.96.0.4"]]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An object in two files: when the later file drops it, the earlier
    /// file's version (not read again by the refresh) is read from its
    /// file and handed over; when the later file brings it back, its
    /// version wins again.
    #[test]
    fn a_duplicate_dropped_by_the_winning_file_is_read_again_from_the_other() {
        let d = dir("duplicate");
        write(&d.join("a.yaml"), WEB);
        write(&d.join("b.yaml"), &WEB.replace("10.96.0.10", "10.96.0.99"));
        let mut directory = Directory::default();
        directory.load(&d).unwrap();
        let all: Vec<String> = batches(&mut directory).concat().iter().map(cluster_ip).collect();
        assert_eq!(all.last().map(String::as_str), Some("10.96.0.99"), "the later file's wins: {all:?}");
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        assert!(directory.refresh(&d).unwrap().0);
        let back: Vec<String> = batches(&mut directory).concat().iter().map(cluster_ip).collect();
        assert_eq!(back, ["10.96.0.10"]);
        write(&d.join("b.yaml"), &WEB.replace("10.96.0.10", "10.96.0.99"));
        directory.refresh(&d).unwrap();
        let again: Vec<String> = batches(&mut directory).concat().iter().map(cluster_ip).collect();
        assert_eq!(again, ["10.96.0.99"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An object whose file no longer gives it when its batch comes (the
    /// file rewritten with a broken document in between) is not lost: it
    /// is handed over once the file reads well again.
    #[test]
    fn an_object_its_file_cannot_give_again_is_handed_over_after_the_next_read() {
        let d = dir("retry");
        write(&d.join("a.yaml"), WEB);
        let mut directory = Directory::default();
        directory.load(&d).unwrap();
        write(&d.join("a.yaml"), &WEB.replace("port: 80", "port: eighty"));
        assert!(batches(&mut directory).concat().is_empty(), "nothing to give yet");
        assert!(directory.retry.contains(&("Service", "demo/web".to_string())));
        write(&d.join("a.yaml"), WEB);
        assert!(directory.refresh(&d).unwrap().0);
        let now: Vec<String> = batches(&mut directory).concat().iter().map(cluster_ip).collect();
        assert_eq!(now, ["10.96.0.10"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// The incremental merge and its batches against a model of each file,
/// over random sequences of whole-file writes (objects added, changed,
/// moved between files, duplicated), half-written files and removed
/// files: after every refresh the merge is what a model of each file's
/// objects (held now, or kept) says, and a proxier fed only the batches holds exactly
/// the merge's objects, each update a real change.
#[cfg(test)]
mod incremental {
    use super::*;
    use proptest::prelude::*;

    /// What one step does to one of three files.
    #[derive(Debug, Clone)]
    enum Step {
        /// Writes the file whole: Services (and slices) by number, each
        /// with a port (a changed port is a changed object).
        Write(usize, Vec<(u8, u16)>),
        /// Writes its first half only (a writer caught mid-way).
        Half(usize, Vec<(u8, u16)>),
        Remove(usize),
        /// Reads without a change (settles half-written files).
        Nothing,
    }

    fn step() -> impl Strategy<Value = Step> {
        let objects = proptest::collection::vec((0u8..8, 80u16..83), 0..6);
        prop_oneof![
            4 => (0usize..3, objects.clone()).prop_map(|(f, o)| Step::Write(f, o)),
            1 => (0usize..3, objects).prop_map(|(f, o)| Step::Half(f, o)),
            1 => (0usize..3).prop_map(Step::Remove),
            1 => Just(Step::Nothing),
        ]
    }

    fn text(objects: &[(u8, u16)]) -> String {
        let docs: Vec<String> = objects
            .iter()
            .flat_map(|(n, port)| {
                [
                    format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"s{n}\",\"namespace\":\"d\"}},\"spec\":{{\"clusterIP\":\"10.96.0.{n}\",\"ports\":[{{\"port\":{port}}}]}}}}"),
                    format!("{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"s{n}-x\",\"namespace\":\"d\",\"labels\":{{\"kubernetes.io/service-name\":\"s{n}\"}}}},\"addressType\":\"IPv4\",\"endpoints\":[{{\"addresses\":[\"10.0.0.{port}\"]}}]}}"),
                ]
            })
            .collect();
        docs.join("\n---\n")
    }

    /// Applies `batch` to `proxier` (kind and name → hash), failing on an
    /// update that changes nothing.
    fn apply(proxier: &mut BTreeMap<ObjectKey, u64>, batch: Vec<Update>) -> Result<(), TestCaseError> {
        for u in batch {
            let (k, now) = match u {
                Update::Service { current: Some(s), .. } => (("Service", format!("d/{}", s.metadata.name.as_deref().unwrap_or_default())), Some(hash_of(&*s))),
                Update::Service { previous: Some(p), current: None } => (("Service", format!("d/{}", p.metadata.name.as_deref().unwrap_or_default())), None),
                Update::EndpointSlice { slice, removed } => (("EndpointSlice", format!("d/{}", slice.metadata.name.as_deref().unwrap_or_default())), (!removed).then(|| hash_of(&*slice))),
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            };
            let before = match now {
                Some(h) => proxier.insert(k.clone(), h),
                None => proxier.remove(&k),
            };
            prop_assert!(before != now, "{k:?}: an update that changes nothing");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn the_incremental_merge_is_the_merge_from_scratch(steps in proptest::collection::vec(step(), 1..12)) {
            let dir = std::env::temp_dir().join(format!("kproxy-incremental-{}-{:?}", std::process::id(), std::thread::current().id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let file = |f: usize| dir.join(format!("f{f}.yaml"));
            let write = |f: usize, t: &str| {
                // A new inode each time, as editors and ConfigMap updates do.
                let tmp = dir.join("tmp");
                std::fs::write(&tmp, t).unwrap();
                std::fs::rename(&tmp, file(f)).unwrap();
            };
            let mut directory = Directory::default();
            let mut proxier = BTreeMap::new();
            // The oracle: what each file holds as read now, and what it
            // keeps (held before, not now, until the directory settles it).
            let mut model: BTreeMap<usize, (Objects, Objects)> = BTreeMap::new();
            for s in steps {
                match &s {
                    Step::Write(f, o) => write(*f, &text(o)),
                    Step::Half(f, o) => { let t = text(o); write(*f, &t[..t.len() / 2]); }
                    Step::Remove(f) => { let _ = std::fs::remove_file(file(*f)); }
                    Step::Nothing => {}
                }
                match &s {
                    Step::Write(f, _) | Step::Half(f, _) => {
                        let holds = index(read_file(&file(*f), &|_| false).objects).0;
                        let (before, mut kept) = model.remove(f).unwrap_or_default();
                        kept.extend(before);
                        kept.retain(|k, _| !holds.contains_key(k));
                        model.insert(*f, (holds, kept));
                    }
                    Step::Remove(f) => drop(model.remove(f)),
                    Step::Nothing => {}
                }
                directory.refresh(&dir).unwrap();
                let mut expected = Objects::new();
                for (f, (holds, kept)) in &mut model {
                    if directory.files[&file(*f)].kept == 0 {
                        kept.clear();
                    }
                    expected.extend(kept.clone());
                    expected.extend(holds.clone());
                }
                let merged: Objects = directory.objects.keys().filter_map(|k| directory.merged(k).map(|h| (k.clone(), h.clone()))).collect();
                prop_assert_eq!(&merged, &expected, "after {:?}", s);
                while let Some(batch) = directory.next_batch() {
                    apply(&mut proxier, batch)?;
                }
                // The one exception: an object left only in a file's kept
                // objects (the file no longer holds it, and has not settled)
                // that became the winner when the file that won before
                // dropped it. Its kept state cannot be read again, so the
                // proxier keeps what it had until the file settles.
                for k in &directory.retry {
                    prop_assert!(directory.objects[k].last().is_some_and(|o| o.kept), "{:?} not given by its file after {:?}", k, s);
                }
                let held: BTreeMap<ObjectKey, u64> = merged.iter().filter_map(|(k, h)| match h { Held::Print { hash, .. } => Some((k.clone(), *hash)), _ => None }).collect();
                let seen = |m: &BTreeMap<ObjectKey, u64>| -> BTreeMap<ObjectKey, u64> { m.iter().filter(|(k, _)| !directory.retry.contains(*k)).map(|(k, h)| (k.clone(), *h)).collect() };
                prop_assert_eq!(seen(&proxier), seen(&held), "after {:?}", s);
                prop_assert!(directory.fresh.is_empty() && directory.touched.is_empty());
                prop_assert!(directory.before.keys().all(|k| directory.retry.contains(k)));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
