//! The README's Compatibility section names every flag, configuration
//! field and metric family kproxy has, so the table cannot drift from the
//! code.

const README: &str = include_str!("../../README.md");

fn section() -> &'static str {
    let start = README.find("## Compatibility").expect("a Compatibility section");
    let rest = &README[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

fn field_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) if prefix != "logging.options" => {
            for (k, v) in map {
                field_paths(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_flag_field_and_family_is_in_the_compatibility_tables() {
    let text = section();
    let mut missing = Vec::new();
    for spec in crate::flags::SPECS {
        if !text.contains(&format!("| `--{}` |", spec.name)) {
            missing.push(format!("flag --{}", spec.name));
        }
    }
    let defaulted = crate::config::defaults::v1alpha1(crate::config::KubeProxyConfiguration::default());
    let mut fields = vec!["featureGates".to_string()];
    field_paths(&serde_json::to_value(defaulted).unwrap(), "", &mut fields);
    for field in fields {
        if !text.contains(&format!("| `{field}` |")) {
            missing.push(format!("field {field}"));
        }
    }
    for mode in [crate::settings::Mode::Nftables, crate::settings::Mode::Iptables, crate::settings::Mode::Ipvs, crate::settings::Mode::Userspace] {
        for family in crate::metrics::every_family(mode) {
            if !text.contains(&format!("`{family}`")) && !missing.contains(&format!("metric {family}")) {
                missing.push(format!("metric {family}"));
            }
        }
    }
    assert!(missing.is_empty(), "README's Compatibility section lacks: {missing:?}");
}
