//! Standalone mode's cluster state: a directory of YAML manifests.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use crate::service_cidrs::ranges_of;

/// The objects read from a directory, by namespace/name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// Services.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices.
    pub slices: BTreeMap<String, EndpointSlice>,
    /// Nodes, by name.
    pub nodes: BTreeMap<String, Node>,
    /// ServiceCIDRs (`networking.k8s.io/v1`), by name.
    pub service_cidrs: BTreeMap<String, ServiceCIDR>,
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
}

fn key(namespace: Option<&String>, name: Option<&String>) -> String {
    format!("{}/{}", namespace.map_or("default", String::as_str), name.map_or("", String::as_str))
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (several documents per file).
/// A file that does not parse is reported with its path and skipped; the
/// other files still count. Returns the objects and one message per bad
/// file or document.
pub fn load(dir: &Path) -> Result<(Manifests, Vec<String>), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read the manifests directory: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    let mut out = Manifests::default();
    let mut problems = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(&text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{}: {}", path.display(), e.to_string().lines().next().unwrap_or("invalid YAML")));
                continue;
            }
        };
        let mut file = Manifests::default();
        let mut bad = None;
        for (i, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
            let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
            let result = match kind.as_str() {
                "Service" => serde_json::from_value::<Service>(doc).map(|s| {
                    file.services.insert(key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()), s);
                }),
                "EndpointSlice" => serde_json::from_value::<EndpointSlice>(doc).map(|s| {
                    file.slices.insert(key(s.metadata.namespace.as_ref(), s.metadata.name.as_ref()), s);
                }),
                "Node" => serde_json::from_value::<Node>(doc).map(|n| {
                    file.nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }),
                "ServiceCIDR" => match serde_json::from_value::<ServiceCIDR>(doc) {
                    Ok(c) => match ranges_of(&c) {
                        Ok(_) => {
                            file.service_cidrs.insert(c.metadata.name.clone().unwrap_or_default(), c);
                            Ok(())
                        }
                        Err(e) => {
                            bad = Some(format!("{}: document {}: {e}", path.display(), i + 1));
                            break;
                        }
                    },
                    Err(e) => Err(e),
                },
                _ => Ok(()),
            };
            if let Err(e) = result {
                bad = Some(format!("{}: document {} ({kind}): {e}", path.display(), i + 1));
                break;
            }
        }
        match bad {
            Some(message) => problems.push(message),
            None => {
                out.services.extend(file.services);
                out.slices.extend(file.slices);
                out.nodes.extend(file.nodes);
                out.service_cidrs.extend(file.service_cidrs);
            }
        }
    }
    Ok((out, problems))
}
