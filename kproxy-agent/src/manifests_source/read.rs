//! Reading manifest files: a file's YAML (or JSON) documents, each parsed
//! on its own, into typed objects and one message per problem; and a whole
//! directory at once ([`read_all`], for the dry run and `diagnose`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::Deserialize;
use serde_json::Value;

use crate::service_cidrs::ranges_of;

/// The largest manifest file read: enough for 50,000 Services with their
/// EndpointSlices in one file (about 1.3 KiB each).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Objects read from manifest files, by namespace/name (a Node's or
/// ServiceCIDR's name).
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

    /// Adds `other`'s objects, replacing any of the same kind and name.
    pub(crate) fn extend(&mut self, other: Manifests) {
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

/// The documents of a YAML stream, with their first line numbers: slices
/// of `text`, not copies.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut start_line, mut start, mut at) = (1, 0, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            let doc = &text[start..at];
            if !doc.trim().is_empty() {
                out.push((start_line, doc));
            }
            start = at + line.len();
            start_line = i + 2;
        }
        at += line.len();
    }
    let doc = &text[start..];
    if !doc.trim().is_empty() {
        out.push((start_line, doc));
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
pub(super) fn parse_yaml(text: &str) -> Result<Value, String> {
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
pub(crate) struct FileRead {
    pub(crate) objects: Manifests,
    pub(crate) problems: Vec<String>,
    pub(crate) partial: bool,
    /// The text hash ([`text_hash`]) of every document that read without
    /// a problem, those skipped included.
    pub(crate) clean: HashSet<u64>,
    /// The text hash of the document each object came from.
    pub(crate) origin: HashMap<(&'static str, String), u64>,
    /// Whether an object was read twice (the later one counts).
    pub(crate) duplicated: bool,
    /// The text hash of the document being read.
    doc: u64,
}

impl FileRead {
    /// Notes that object `k` of `kind` came from the document being read
    /// (and whether an earlier document held it too); gives `k` back, for
    /// the object's map.
    fn note_origin(&mut self, kind: &'static str, k: String) -> String {
        self.duplicated |= self.origin.insert((kind, k.clone()), self.doc).is_some();
        k
    }

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
                let k = self.note_origin("Service", key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()));
                self.objects.services.insert(k, Arc::new(s));
            }),
            "EndpointSlice" => EndpointSlice::deserialize(&doc).map(|s| {
                let k = self.note_origin("EndpointSlice", key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()));
                self.objects.slices.insert(k, Arc::new(s));
            }),
            "Node" => Node::deserialize(&doc).map(|n| {
                let k = self.note_origin("Node", n.metadata.name.clone().unwrap_or_default());
                self.objects.nodes.insert(k, Arc::new(n));
            }),
            "ServiceCIDR" => match ServiceCIDR::deserialize(&doc) {
                Ok(c) => match ranges_of(&c) {
                    Ok(_) => {
                        let k = self.note_origin("ServiceCIDR", c.metadata.name.clone().unwrap_or_default());
                        self.objects.service_cidrs.insert(k, Arc::new(c));
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

/// A hash of a document's text: a document whose text is the same as on
/// the last read need not be parsed again.
pub(crate) fn text_hash(doc: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(doc.as_bytes());
    h.finish()
}

/// Reads one file, bounded, skipping the documents whose text hash
/// `unchanged` accepts (they count as clean; their objects are not in
/// the result).
pub(crate) fn read_file(path: &Path, unchanged: &dyn Fn(u64) -> bool) -> FileRead {
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
        out.doc = text_hash(doc);
        if unchanged(out.doc) {
            out.clean.insert(out.doc);
            continue;
        }
        let where_ = format!("{shown}: document at line {line}");
        let problems = out.problems.len();
        match parse_document(doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.object(value, &where_),
            Err(e) => {
                out.problems.push(format!("{where_}: {e}; the file's objects keep their last good state"));
                out.partial = true;
            }
        }
        if out.problems.len() == problems {
            out.clean.insert(out.doc);
        }
    }
    out
}


/// Reads every manifest file of `dir` at once, merged in file name order
/// (a later file's object wins), with one message per problem; for a
/// one-off look (the dry run, `diagnose`): a running source keeps much
/// less ([`super::Directory`]).
pub fn read_all(dir: &Path) -> Result<(Manifests, Vec<String>), String> {
    let mut all = Manifests::default();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(&'static str, String), PathBuf> = BTreeMap::new();
    for path in manifest_files(dir)? {
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                problems.push(not_regular(&path));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        }
        let read = read_file(&path, &|_| false);
        problems.extend(read.problems);
        for k in read.objects.keys() {
            if let Some(before) = seen.insert(k.clone(), path.clone()) {
                problems.push(in_both(&k, &before, &path));
            }
        }
        all.extend(read.objects);
    }
    Ok((all, problems))
}

/// The `*.yaml` and `*.yml` paths of `dir`, sorted.
pub(crate) fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read the manifests directory: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The message for a path that is not a regular file.
pub(crate) fn not_regular(path: &Path) -> String {
    format!("{}: not a regular file (a FIFO, device or directory); skipped", path.display())
}

/// The message for an object in two files.
pub(crate) fn in_both(k: &(&'static str, String), first: &Path, second: &Path) -> String {
    format!("{} {} is in both {} and {}; the latter's is used", k.0, k.1, first.display(), second.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

    /// JSON documents take the JSON parser's fast path and read the same
    /// as YAML; a flow mapping JSON refuses is still YAML.
    #[test]
    fn documents_are_split_at_their_markers_with_their_line_numbers() {
        let text = "a: 1\n---\n\n--- # two\nb: 2\r\n...\nc: 3";
        assert_eq!(documents(text), [(1, "a: 1\n"), (5, "b: 2\r\n"), (7, "c: 3")]);
        assert!(documents("---\n---\n").is_empty());
    }

    #[test]
    fn json_documents_read_as_their_yaml() {
        let yaml = parse_yaml(WEB).unwrap();
        assert_eq!(parse_document(&serde_json::to_string(&yaml).unwrap()).unwrap(), yaml);
        assert_eq!(parse_document("{kind: Service, metadata: {name: web}}").unwrap()["metadata"]["name"], "web");
        assert!(parse_document("{kind: [}").is_err());
    }

    /// Documents whose text hash the caller knows are not parsed but
    /// count as clean; a changed one is parsed, and one with a problem is
    /// not clean (it is parsed again next time, and its problem said
    /// again).
    #[test]
    fn unchanged_documents_are_skipped_and_bad_ones_never_are() {
        let path = std::env::temp_dir().join(format!("kproxy-read-skip-{}.yaml", std::process::id()));
        let api = WEB.replace("name: web", "name: api");
        std::fs::write(&path, format!("{WEB}---\n{api}---\nkind: Service\nspec: 3\n")).unwrap();
        let first = read_file(&path, &|_| false);
        assert_eq!((first.objects.services.len(), first.clean.len(), first.problems.len()), (2, 2, 1));
        assert!(!first.duplicated);
        let web = text_hash(WEB);
        assert!(first.clean.contains(&web) && first.origin[&("Service", "demo/web".to_string())] == web);
        let again = read_file(&path, &|h| first.clean.contains(&h));
        assert!(again.objects.services.is_empty(), "both Services' documents are unchanged");
        assert_eq!((again.clean, again.problems.len()), (first.clean, 1));
        std::fs::write(&path, format!("{WEB}---\n{WEB}")).unwrap();
        assert!(read_file(&path, &|_| false).duplicated);
        let _ = std::fs::remove_file(&path);
    }

    /// The one-off read of a whole directory: later files win, and
    /// duplicates, special files and bad documents are reported.
    #[test]
    fn read_all_merges_every_file_and_reports_problems() {
        let d = std::env::temp_dir().join(format!("kproxy-read-all-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.yaml"), WEB).unwrap();
        std::fs::write(d.join("b.yaml"), format!("{}---\nkind: Service\nspec: 3\n", WEB.replace("10.96.0.10", "10.96.0.99"))).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join("null.yaml")).unwrap();
        let (m, problems) = read_all(&d).unwrap();
        assert_eq!(m.services["demo/web"].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.99"));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("in both")) && problems.iter().any(|p| p.contains("null.yaml: not a regular file")), "{problems:?}");
        assert!(read_all(&d.join("none")).unwrap_err().contains("cannot read the manifests directory"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
