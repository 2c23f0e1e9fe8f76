//! Reading `deploy/`: its YAML documents and the permissions its
//! ClusterRole grants.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// The path of a file in `deploy/`.
pub fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// The documents of a file in `deploy/`, as JSON values.
pub fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path(file)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The one document of `kind` in a file.
pub fn document<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let doc = documents(file).into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/{file}"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("deploy/{file} {kind}: {e}"))
}

/// (API group, resource, verb) triples the ClusterRole grants.
pub fn granted() -> BTreeSet<(String, String, String)> {
    let role: k8s_openapi::api::rbac::v1::ClusterRole = document("rbac.yaml", "ClusterRole");
    let mut out = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}
