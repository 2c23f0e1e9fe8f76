//! Reading a configuration file as upstream does: strict decoding first,
//! and on unknown fields a warning per field and lenient decoding.

use std::io::Read;

use serde_json::Value;

use super::{ConfigError, KubeProxyConfiguration};

/// The largest configuration file read (a real one is a few KiB; this
/// bounds what a wrong path such as `/dev/zero` can cost).
pub const MAX_BYTES: u64 = 1 << 20;

/// Reads `path`, refusing more than [`MAX_BYTES`] and text that is not
/// UTF-8, with one line naming the file.
pub fn read(path: &str) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError::Parse { path: path.to_string(), message };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read the configuration file: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(format!("cannot read the configuration file: {e}")))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(fail(format!("larger than {} KiB; not a configuration file", MAX_BYTES / 1024)));
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text; not a configuration file".into()))
}

/// Fields whose contents are free-form (maps, or structures kproxy keeps
/// as they are), so nothing inside them is unknown.
const OPAQUE: &[&str] = &["featureGates", "logging.options", "logging.vmodule", "logging.flushFrequency"];

/// The dotted paths of the fields of `input` that `known` (a fully
/// populated configuration) lacks.
fn unknown_fields(input: &Value, known: &Value, prefix: &str, out: &mut Vec<String>) {
    let (Value::Object(input), Value::Object(known)) = (input, known) else { return };
    for (key, value) in input {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if OPAQUE.contains(&path.as_str()) {
            continue;
        }
        match known.get(key) {
            None => out.push(path),
            Some(k) => unknown_fields(value, k, &path, out),
        }
    }
}

/// Parses a configuration file's text (`path` names it in messages).
/// Returns the configuration and one warning per unknown field, which is
/// ignored, as upstream's lenient decoding ignores it.
pub fn parse(path: &str, text: &str) -> Result<(KubeProxyConfiguration, Vec<String>), ConfigError> {
    let fail = |message: String| ConfigError::Parse { path: path.to_string(), message };
    let first_line = |e: &dyn std::fmt::Display| e.to_string().lines().next().unwrap_or("invalid YAML").to_string();
    let tree: Value = serde_saphyr::from_str(text).map_err(|e| fail(first_line(&e)))?;
    if !tree.is_object() {
        return Err(fail("not a KubeProxyConfiguration (expected a mapping with apiVersion and kind)".into()));
    }
    let invalid = |field: &str, message: String| ConfigError::Invalid { path: path.to_string(), field: field.to_string(), message };
    match tree.get("apiVersion").and_then(Value::as_str) {
        Some("kubeproxy.config.k8s.io/v1alpha1") => {}
        Some(v) => return Err(invalid("apiVersion", format!("{v:?} is not kubeproxy.config.k8s.io/v1alpha1"))),
        None => return Err(invalid("apiVersion", "missing (kubeproxy.config.k8s.io/v1alpha1, as upstream requires)".into())),
    }
    match tree.get("kind").and_then(Value::as_str) {
        Some("KubeProxyConfiguration") => {}
        Some(k) => return Err(invalid("kind", format!("{k:?} is not KubeProxyConfiguration"))),
        None => return Err(invalid("kind", "missing (KubeProxyConfiguration, as upstream requires)".into())),
    }
    let config: KubeProxyConfiguration = serde_saphyr::from_str(text).map_err(|e| fail(first_line(&e)))?;
    let known = serde_json::to_value(super::defaults::v1alpha1(KubeProxyConfiguration::default())).unwrap_or_default();
    let mut unknown = Vec::new();
    unknown_fields(&tree, &known, "", &mut unknown);
    let warnings = unknown
        .into_iter()
        .map(|field| format!("{path}: unknown field {field:?} ignored (strict decoding failed; the rest of the file applies, as upstream's lenient decoding)"))
        .collect();
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    const KUBEADM: &str = include_str!("../../testdata/kubeadm-config.yaml");

    #[test]
    fn kubeadm_s_configmap_parses_without_warnings() {
        let (c, warnings) = parse("kubeadm-config.yaml", KUBEADM).unwrap();
        assert_eq!(c.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(c.node_port_addresses, None);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unknown_fields_are_one_warning_each_and_the_rest_applies() {
        let text = format!("{HEAD}clusterCidr: 10.0.0.0/8\nmode: ipvs\nnftables:\n  masqueradeBits: 3\nfeatureGates:\n  Anything: true\n");
        let (c, warnings) = parse("c.yaml", &text).unwrap();
        assert_eq!(c.mode.as_deref(), Some("ipvs"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("c.yaml: unknown field \"clusterCidr\""), "{warnings:?}");
        assert!(warnings[1].contains("\"nftables.masqueradeBits\""), "{warnings:?}");
    }

    #[test]
    fn wrong_types_kinds_and_durations_are_errors() {
        assert!(parse("c.yaml", &format!("{HEAD}iptables:\n  masqueradeAll: maybe\n")).is_err());
        let err = parse("c.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n").unwrap_err().to_string();
        assert_eq!(err, "c.yaml: kind: \"KubeletConfiguration\" is not KubeProxyConfiguration");
        assert!(parse("c.yaml", "mode: ipvs\n").unwrap_err().to_string().contains("apiVersion: missing"));
        for huge in ["99999999999999999999h", "5000000000000000h"] {
            let err = parse("c.yaml", &format!("{HEAD}nftables:\n  syncPeriod: {huge}\n")).unwrap_err().to_string();
            assert!(err.contains("time: invalid duration") && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn endless_and_binary_files_are_refused() {
        let err = read("/dev/zero").unwrap_err().to_string();
        assert!(err.starts_with("/dev/zero: larger than"), "{err}");
        let err = read("/no/such/file").unwrap_err().to_string();
        assert!(err.starts_with("/no/such/file: cannot read"), "{err}");
    }
}
