//! `deploy/` is what an operator applies: the documents must parse as the
//! Kubernetes objects they claim to be, fit together, grant only what
//! kproxy uses, and carry a configuration the binary accepts.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::deploy::{document, granted, path};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

/// Reads of what kproxy watches, and the one Event it records at start
/// (as upstream); nothing else.
#[test]
fn the_role_grants_reads_and_the_starting_event_only() {
    let mut expected: BTreeSet<(String, String, String)> =
        [("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "servicecidrs")]
        .into_iter()
        .flat_map(|(g, r)| ["get", "list", "watch"].map(|v| (g.to_string(), r.to_string(), v.to_string())))
        .collect();
    expected.insert(("events.k8s.io".into(), "events".into(), "create".into()));
    assert_eq!(granted(), expected);
}

#[test]
fn the_pieces_fit_together() {
    let account: ServiceAccount = document("rbac.yaml", "ServiceAccount");
    let binding: ClusterRoleBinding = document("rbac.yaml", "ClusterRoleBinding");
    let config: ConfigMap = document("configmap.yaml", "ConfigMap");
    let ds: DaemonSet = document("daemonset.yaml", "DaemonSet");
    let name = account.metadata.name.clone().unwrap();
    let namespace = account.metadata.namespace.clone().unwrap();
    assert_eq!(namespace, "kube-system");
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str(), subject.namespace.as_deref()), ("ServiceAccount", name.as_str(), Some("kube-system")));
    assert_eq!(binding.role_ref.kind, "ClusterRole");

    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    assert_eq!(pod.host_network, Some(true), "kube-proxy's dataplane is the node's");
    let container = &pod.containers[0];
    assert_eq!(container.security_context.as_ref().unwrap().privileged, Some(true));
    let command = container.command.clone().unwrap();
    let config_arg = command.iter().find_map(|a| a.strip_prefix("--config=")).expect("--config");
    assert!(command.iter().any(|a| a == "--hostname-override=$(NODE_NAME)"));
    let (dir, file) = config_arg.rsplit_once('/').unwrap();
    let mount = container.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == dir).expect("the config directory is mounted");
    let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.config_map.as_ref().unwrap().name, config.metadata.name.clone().unwrap());
    assert!(config.data.as_ref().unwrap().contains_key(file), "the ConfigMap has {file}");
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.clone());
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/livez"));
    // Not /healthz: it fails on draining nodes by design.
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/livez"));
}

#[test]
fn the_binary_accepts_the_configmaps_configuration() {
    let config: ConfigMap = document("configmap.yaml", "ConfigMap");
    let text = &config.data.unwrap()["config.conf"];
    let dir = std::env::temp_dir().join(format!("kproxy-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, out) = (dir.join("config.conf"), dir.join("effective.yaml"));
    std::fs::write(&file, text).unwrap();
    let run = Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "--hostname-override", "node-a", "--write-config-to", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let effective = std::fs::read_to_string(&out).unwrap();
    assert!(effective.contains("mode: nftables"), "{effective}");
    assert!(path("Dockerfile").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Dockerfile (for users with a registry and a container builder) and
/// scripts/image.py (what the node tests run) install the same Debian
/// packages, so both images carry the same tools.
#[test]
fn the_dockerfile_and_the_image_script_install_the_same_packages() {
    let dockerfile = std::fs::read_to_string(path("Dockerfile")).unwrap();
    let line = dockerfile.lines().find(|l| l.contains("apt-get install")).expect("an apt-get install line");
    let from_docker: BTreeSet<&str> = line.split_whitespace().skip_while(|w| *w != "--no-install-recommends").skip(1).filter(|w| !w.starts_with('&') && !w.starts_with('\\')).collect();
    let script = std::fs::read_to_string(path("../scripts/image.py")).unwrap();
    let roots = script.lines().find_map(|l| l.strip_prefix("ROOTS = [")).expect("ROOTS in image.py");
    let from_script: BTreeSet<&str> =
        roots.trim_end_matches(']').split(',').map(|w| w.trim().trim_matches('"')).filter(|p| !p.starts_with("lib")).collect();
    assert!(from_script.contains("nftables") && from_script.len() >= 5, "{from_script:?}");
    assert_eq!(from_docker, from_script);
}
