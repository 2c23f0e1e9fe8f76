//! Standalone mode's cluster state: a directory of YAML manifests, read so
//! that no file can break it.
//!
//! - Each `*.yaml`/`*.yml` file holds documents separated by `---`; each
//!   document is parsed on its own, so a bad one (a wrong type, broken
//!   YAML, a file cut off mid-write) costs only itself. While a file has a
//!   problem, the objects it held keep their last good state: a
//!   half-written file never withdraws anything.
//! - Files that are not regular files (FIFOs, devices, also behind a
//!   symlink) and files over [`MAX_FILE_BYTES`] are skipped with one
//!   message; their objects keep their last state too.
//! - `kind: List` documents are read item by item. Kinds kproxy does not
//!   read, and an object defined in two files (the later file's wins), are
//!   reported.
//! - [`Directory`] keeps each file's last good objects and re-parses only
//!   files whose size, time or inode changed. It keeps their merge up to
//!   date one changed file at a time and remembers which objects a
//!   refresh touched ([`Directory::take_touched`]), so a rewritten file
//!   costs its own objects, however large the directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::Deserialize;
use serde_json::Value;

use crate::service_cidrs::ranges_of;

/// The largest manifest file read: enough for 50,000 Services with their
/// EndpointSlices in one file (about 1.3 KiB each).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// The objects read from a directory, by namespace/name. Objects are
/// shared (`Arc`): merging files and handing objects to the proxiers copy
/// no object, and an object that was not read again is the same
/// allocation as before (so comparing it is a pointer comparison).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// Services.
    pub services: BTreeMap<String, Arc<Service>>,
    /// EndpointSlices.
    pub slices: BTreeMap<String, Arc<EndpointSlice>>,
    /// Nodes, by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// ServiceCIDRs (`networking.k8s.io/v1`), by name.
    pub service_cidrs: BTreeMap<String, Arc<ServiceCIDR>>,
}

impl Manifests {
    /// Every range of every ServiceCIDR, sorted (see
    /// [`crate::service_cidrs`]); ranges were checked when read.
    pub fn service_cidr_ranges(&self) -> Vec<ipnet::IpNet> {
        let mut all = crate::service_cidrs::ServiceCidrs::default();
        for o in self.service_cidrs.values() {
            all.upsert(o);
        }
        all.union()
    }

    /// Every object's kind and key.
    pub(crate) fn keys(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        out.extend(self.services.keys().map(|k| ("Service", k.clone())));
        out.extend(self.slices.keys().map(|k| ("EndpointSlice", k.clone())));
        out.extend(self.nodes.keys().map(|k| ("Node", k.clone())));
        out.extend(self.service_cidrs.keys().map(|k| ("ServiceCIDR", k.clone())));
        out
    }

    fn has(&self, kind: &str, key: &str) -> bool {
        match kind {
            "Service" => self.services.contains_key(key),
            "EndpointSlice" => self.slices.contains_key(key),
            "Node" => self.nodes.contains_key(key),
            "ServiceCIDR" => self.service_cidrs.contains_key(key),
            _ => false,
        }
    }

    /// Copies `kind`/`key` from `other`, if it has it.
    fn keep(&mut self, other: &Manifests, kind: &str, key: &str) {
        match kind {
            "Service" => self.services.extend(other.services.get_key_value(key).map(|(k, v)| (k.clone(), v.clone()))),
            "EndpointSlice" => self.slices.extend(other.slices.get_key_value(key).map(|(k, v)| (k.clone(), v.clone()))),
            "Node" => self.nodes.extend(other.nodes.get_key_value(key).map(|(k, v)| (k.clone(), v.clone()))),
            "ServiceCIDR" => self.service_cidrs.extend(other.service_cidrs.get_key_value(key).map(|(k, v)| (k.clone(), v.clone()))),
            _ => {}
        }
    }

    /// Removes `kind`/`key`, if present.
    fn remove(&mut self, kind: &str, key: &str) {
        match kind {
            "Service" => drop(self.services.remove(key)),
            "EndpointSlice" => drop(self.slices.remove(key)),
            "Node" => drop(self.nodes.remove(key)),
            "ServiceCIDR" => drop(self.service_cidrs.remove(key)),
            _ => {}
        }
    }

    fn extend(&mut self, other: Manifests) {
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.nodes.extend(other.nodes);
        self.service_cidrs.extend(other.service_cidrs);
    }
}

fn key(namespace: Option<&String>, name: Option<&String>) -> String {
    format!("{}/{}", namespace.map_or("default", String::as_str), name.map_or("", String::as_str))
}

/// The kinds kproxy reads.
const KINDS: &str = "Service, EndpointSlice, Node, ServiceCIDR (and List of them)";

/// The documents of a YAML stream, with their first line numbers.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            if !current.trim().is_empty() {
                out.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current));
    }
    out
}

/// Parses one document: JSON (which is YAML) with the JSON parser, many
/// times faster on generated files; anything else, or JSON it refuses,
/// as YAML with budgets sized for a large `List`.
fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        if let Ok(value) = serde_json::from_str(text) {
            return Ok(value);
        }
    }
    parse_yaml(text)
}

/// Parses one document's YAML with budgets sized for a large `List`.
fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize + 1);
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string().lines().next().unwrap_or("invalid YAML").to_string())
}

/// One file's objects and problems. `problem` is set when something in it
/// could not be read (its previous objects are then kept).
#[derive(Debug, Default)]
struct FileRead {
    objects: Manifests,
    problems: Vec<String>,
    partial: bool,
}

impl FileRead {
    /// Adds one object (a `List` item included) read from `where_`.
    fn object(&mut self, doc: Value, where_: &str) {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        let named = |doc: &Value| {
            let m = doc.get("metadata");
            let field = |f: &str| m.and_then(|m| m.get(f)).and_then(Value::as_str).map(String::from);
            key(field("namespace").as_ref(), field("name").as_ref())
        };
        // The name for a message, taken before the document is consumed.
        let name = named(&doc);
        // Objects are read by value: their text moves into them instead of
        // being copied, and their lists are allocated at their length.
        let result: Result<(), serde_json::Error> = match kind.as_str() {
            "List" => {
                let mut doc = doc;
                if let Some(Value::Array(items)) = doc.get_mut("items").map(Value::take) {
                    for item in items {
                        self.object(item, where_);
                    }
                }
                Ok(())
            }
            "Service" => Service::deserialize(&doc).map(|s| {
                self.objects.services.insert(key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()), Arc::new(s));
            }),
            "EndpointSlice" => EndpointSlice::deserialize(&doc).map(|s| {
                self.objects.slices.insert(key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()), Arc::new(s));
            }),
            "Node" => Node::deserialize(&doc).map(|n| {
                self.objects.nodes.insert(n.metadata.name.clone().unwrap_or_default(), Arc::new(n));
            }),
            "ServiceCIDR" => match ServiceCIDR::deserialize(&doc) {
                Ok(c) => match ranges_of(&c) {
                    Ok(_) => {
                        self.objects.service_cidrs.insert(c.metadata.name.clone().unwrap_or_default(), Arc::new(c));
                        Ok(())
                    }
                    Err(e) => {
                        self.problems.push(format!("{where_}: {e}"));
                        self.partial = true;
                        return;
                    }
                },
                Err(e) => Err(e),
            },
            "" => {
                self.problems.push(format!("{where_}: no kind; kproxy reads {KINDS}"));
                return;
            }
            other => {
                self.problems.push(format!("{where_}: kind {other} is not read by kproxy (it reads {KINDS}); skipped"));
                return;
            }
        };
        if let Err(e) = result {
            self.problems.push(format!("{where_} ({kind} {}): {e}; it keeps its last good state", name.trim_start_matches("default/")));
            self.partial = true;
        }
    }
}

/// Reads one file, bounded.
fn read_file(path: &Path) -> FileRead {
    let mut out = FileRead::default();
    let shown = path.display();
    let text = match std::fs::File::open(path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    }) {
        Ok(bytes) if bytes.len() as u64 > MAX_FILE_BYTES => {
            out.problems.push(format!("{shown}: larger than {} MiB; skipped (its objects keep their last state)", MAX_FILE_BYTES >> 20));
            out.partial = true;
            return out;
        }
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                out.problems.push(format!("{shown}: not UTF-8 text; skipped (its objects keep their last state)"));
                out.partial = true;
                return out;
            }
        },
        Err(e) => {
            out.problems.push(format!("{shown}: {e}; skipped (its objects keep their last state)"));
            out.partial = true;
            return out;
        }
    };
    for (line, doc) in documents(&text) {
        let where_ = format!("{shown}: document at line {line}");
        match parse_document(&doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.object(value, &where_),
            Err(e) => {
                out.problems.push(format!("{where_}: {e}; the file's objects keep their last good state"));
                out.partial = true;
            }
        }
    }
    out
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

/// One file as last read.
#[derive(Debug, Clone)]
struct FileState {
    stamp: Stamp,
    /// What the file holds now.
    parsed: Manifests,
    /// Objects the file held before and not now, kept until the file
    /// reads the same twice in a row without a problem and has gone
    /// [`SETTLE`] unmodified (a writer may be half-way through it).
    kept: Manifests,
    problems: Vec<String>,
    partial: bool,
}

impl FileState {
    fn objects(&self) -> Manifests {
        let mut all = self.kept.clone();
        all.extend(self.parsed.clone());
        all
    }
}

/// An object's kind and namespace/name (a Node's or ServiceCIDR's name).
pub(crate) type ObjectKey = (&'static str, String);

/// A manifests directory as last read: each file's last good objects, and
/// their merge, kept up to date one changed file at a time (a rewritten
/// file costs its own objects, not the directory's).
#[derive(Debug, Default)]
pub struct Directory {
    files: BTreeMap<PathBuf, FileState>,
    /// Which files hold each object (the last one's is used).
    owners: HashMap<ObjectKey, BTreeSet<Arc<Path>>>,
    /// Every file's objects, merged.
    merged: Manifests,
    /// The objects in more than one file.
    shared: BTreeSet<ObjectKey>,
    /// The objects the refreshes since the last [`Directory::take_touched`]
    /// may have changed, and their merged state before the first of them
    /// (absent when they were).
    touched: BTreeSet<ObjectKey>,
    before: Manifests,
}

impl Directory {
    /// Reads `dir` again, re-parsing only the files that changed. Returns
    /// the objects and one message per problem (bad documents, skipped
    /// files, unsupported kinds, objects in two files). An object leaves
    /// only once its file reads the same, without a problem, on two reads
    /// in a row, and has gone [`SETTLE`] unmodified: a file caught
    /// half-written withdraws nothing.
    pub fn load(&mut self, dir: &Path) -> Result<(Manifests, Vec<String>), String> {
        let (_, mut problems) = self.refresh(dir)?;
        self.take_touched();
        problems.extend(self.duplicates());
        Ok((self.objects(), problems))
    }

    /// Reads `dir` again like [`Directory::load`], without merging the
    /// objects: says whether any file's objects changed (a file re-read,
    /// added or gone, or a half-written file's kept objects withdrawn),
    /// and every file's problems. Nothing changed means the last
    /// [`Directory::objects`] still holds, so a caller polling a large
    /// directory does no more than a `stat` per file.
    pub fn refresh(&mut self, dir: &Path) -> Result<(bool, Vec<String>), String> {
        let mut changed = false;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read the manifests directory: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        paths.sort();
        let mut problems = Vec::new();
        let mut files = BTreeMap::new();
        // The files whose objects changed, with their objects before.
        let mut rewritten: Vec<(PathBuf, Option<Manifests>)> = Vec::new();
        for path in paths {
            let previous = self.files.remove(&path);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    // Gone between the listing and now: its objects go.
                    if let Some(p) = previous {
                        rewritten.push((path.clone(), Some(p.objects())));
                    }
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(format!("{}: not a regular file (a FIFO, device or directory); skipped", path.display()));
                if let Some(p) = previous {
                    files.insert(path, p);
                }
                continue;
            }
            let now = stamp(&meta);
            let state = match previous {
                // Unchanged: settled, unless it still has a problem.
                Some(mut p) if p.stamp == now => {
                    if !p.partial && p.kept != Manifests::default() && settled(&meta) {
                        rewritten.push((path.clone(), Some(p.objects())));
                        p.kept = Manifests::default();
                    }
                    p
                }
                previous => {
                    let read = read_file(&path);
                    let mut kept = Manifests::default();
                    let before = previous.map(|p| p.objects());
                    if let Some(before) = &before {
                        for (kind, key) in before.keys() {
                            if !read.objects.has(kind, &key) {
                                kept.keep(before, kind, &key);
                            }
                        }
                    }
                    rewritten.push((path.clone(), before));
                    FileState { stamp: now, parsed: read.objects, kept, problems: read.problems, partial: read.partial }
                }
            };
            problems.extend(state.problems.iter().cloned());
            files.insert(path, state);
        }
        // Files gone since the last read.
        for (path, state) in std::mem::take(&mut self.files) {
            rewritten.push((path, Some(state.objects())));
        }
        self.files = files;
        changed |= !rewritten.is_empty();
        for (path, before) in rewritten {
            self.merge_file(&path, before);
        }
        Ok((changed, problems))
    }

    /// Brings the merge up to date with `path`'s objects, which were
    /// `before` (`None`: a new file).
    fn merge_file(&mut self, path: &Path, before: Option<Manifests>) {
        let owner: Arc<Path> = Arc::from(path);
        let now = self.files.get(path).map(FileState::objects).unwrap_or_default();
        let mut keys: BTreeSet<ObjectKey> = before.map(|b| b.keys()).unwrap_or_default().into_iter().collect();
        for k in &keys {
            if let Some(owners) = self.owners.get_mut(k) {
                owners.remove(&owner);
            }
        }
        for k in now.keys() {
            self.owners.entry(k.clone()).or_default().insert(Arc::clone(&owner));
            keys.insert(k);
        }
        for k in keys {
            self.merge_object(k);
        }
    }

    /// Sets object `k` of the merge to its last owner's (or removes it),
    /// remembering its state before the first change since
    /// [`Directory::take_touched`].
    fn merge_object(&mut self, k: ObjectKey) {
        let (kind, key) = (k.0, k.1.as_str());
        if !self.touched.contains(&k) {
            self.before.keep(&self.merged, kind, key);
        }
        self.merged.remove(kind, key);
        let owners = self.owners.get(&k);
        if let Some(state) = owners.and_then(|o| o.last()).and_then(|p| self.files.get(&**p)) {
            self.merged.keep(&state.parsed, kind, key);
            self.merged.keep(&state.kept, kind, key);
        }
        match owners.map_or(0, BTreeSet::len) {
            0 => {
                self.owners.remove(&k);
                self.shared.remove(&k);
            }
            1 => {
                self.shared.remove(&k);
            }
            _ => {
                self.shared.insert(k.clone());
            }
        }
        self.touched.insert(k);
    }

    /// Every file's objects as of the last refresh, merged (a later file's
    /// object wins over an earlier file's of the same kind and name; see
    /// [`Directory::duplicates`]).
    pub fn objects(&self) -> Manifests {
        self.merged.clone()
    }

    /// The merged objects, as [`Directory::objects`] without a copy.
    pub fn merged(&self) -> &Manifests {
        &self.merged
    }

    /// The objects the refreshes since the last call may have changed, and
    /// their merged state before (a partial [`Manifests`]: an object it
    /// lacks was absent); [`Directory::merged`] has their state now.
    pub fn take_touched(&mut self) -> (Manifests, BTreeSet<(&'static str, String)>) {
        (std::mem::take(&mut self.before), std::mem::take(&mut self.touched))
    }

    /// One message per object found in two files (the later file's is
    /// used), as of the last refresh.
    pub fn duplicates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in &self.shared {
            let owners: Vec<&Arc<Path>> = self.owners.get(k).into_iter().flatten().collect();
            for pair in owners.windows(2) {
                out.push(format!("{} {} is in both {} and {}; the latter's is used", k.0, k.1, pair[0].display(), pair[1].display()));
            }
        }
        out
    }
}

impl Directory {
    /// The merge computed from every file's objects at once (the
    /// incremental merge's oracle).
    #[cfg(test)]
    pub(crate) fn merged_from_scratch(&self) -> Manifests {
        let mut all = Manifests::default();
        for state in self.files.values() {
            all.extend(state.objects());
        }
        all
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
        write_at(&a, "", std::time::SystemTime::now());
        for _ in 0..3 {
            directory.refresh(&d).unwrap();
            assert_eq!(directory.objects().services.len(), 2, "a fresh empty file withdraws nothing");
        }
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(std::time::SystemTime::now() - 2 * SETTLE).unwrap();
        directory.refresh(&d).unwrap();
        directory.refresh(&d).unwrap();
        assert_eq!(directory.objects().services.len(), 0, "settled: withdrawn");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// JSON documents take the JSON parser's fast path and read the same
    /// as YAML; a flow mapping JSON refuses is still YAML.
    #[test]
    fn json_documents_read_as_their_yaml() {
        let yaml = parse_yaml(WEB).unwrap();
        assert_eq!(parse_document(&serde_json::to_string(&yaml).unwrap()).unwrap(), yaml);
        assert_eq!(parse_document("{kind: Service, metadata: {name: web}}").unwrap()["metadata"]["name"], "web");
        assert!(parse_document("{kind: [}").is_err());
    }

    /// A refresh says whether the objects changed, so the one-second poll
    /// of a large, quiet directory costs a `stat` per file: a file
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
        assert_eq!(directory.objects().services.len(), 3);
        assert!(!directory.refresh(&d).unwrap().0, "the same files");
        write(&a, WEB);
        assert!(directory.refresh(&d).unwrap().0, "a written");
        assert_eq!(directory.objects().services.len(), 3, "api is kept until a.yaml settles");
        assert!(directory.refresh(&d).unwrap().0, "settled: api withdrawn");
        assert_eq!(directory.objects().services.len(), 2);
        assert!(!directory.refresh(&d).unwrap().0);
        std::fs::remove_file(&b).unwrap();
        assert!(directory.refresh(&d).unwrap().0, "b removed");
        assert_eq!(directory.objects().services.len(), 1);
        assert!(!directory.refresh(&d).unwrap().0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_document_costs_only_itself_and_a_half_written_file_withdraws_nothing() {
        let d = dir("bad-doc");
        let file = d.join("a.yaml");
        write(&file, &format!("{WEB}---\n{API}"));
        let mut directory = Directory::default();
        let (m, problems) = directory.load(&d).unwrap();
        assert_eq!(m.services.len(), 2, "{problems:?}");
        // A wrong type in one document: the other still counts, and the bad
        // one keeps its last good state.
        write(&file, &format!("{WEB}---\n{}", API.replace("port: 80", "port: eighty")));
        let (m, problems) = directory.load(&d).unwrap();
        assert_eq!(m.services.len(), 2, "the bad document's Service keeps its last state");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a.yaml: document at line 11") && problems[0].contains("Service demo/api"), "{problems:?}");
        // Cut off mid-write: nothing is withdrawn.
        let full = format!("{WEB}---\n{API}");
        write(&file, &full[..full.len() / 3]);
        let (m, problems) = directory.load(&d).unwrap();
        assert_eq!(m.services.len(), 2, "{problems:?}");
        // Fixed, and one Service deliberately removed: it goes once the
        // file reads the same twice (a writer may still be at work).
        write(&file, WEB);
        let (m, problems) = directory.load(&d).unwrap();
        assert_eq!((m.services.len(), problems.len()), (2, 0), "{problems:?}");
        let (m, problems) = directory.load(&d).unwrap();
        assert_eq!((m.services.len(), problems.len()), (1, 0), "{problems:?}");
        // Emptied: the same.
        write(&file, "");
        assert_eq!(directory.load(&d).unwrap().0.services.len(), 1, "not yet");
        assert_eq!(directory.load(&d).unwrap().0.services.len(), 0, "settled");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn special_huge_unknown_and_duplicate_files_are_reported() {
        let d = dir("special");
        write(&d.join("a.yaml"), WEB);
        write(&d.join("b.yaml"), &format!("{WEB}---\nkind: Endpoints\nmetadata:\n  name: x\n---\nkind: List\nitems:\n- {}\n", serde_json::to_string(&parse_yaml(API).unwrap()).unwrap()));
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(d.join("fifo.yaml")).status().unwrap().success());
        let (m, problems) = Directory::default().load(&d).unwrap();
        assert_eq!(m.services.keys().collect::<Vec<_>>(), ["demo/api", "demo/web"], "a List's items count: {problems:?}");
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
        let (m, problems) = Directory::default().load(&d).unwrap();
        assert_eq!(m.services.len(), 5000, "{problems:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
