//! kproxy's command line and configuration, checked against upstream
//! kube-proxy v1.34.4's own binary (built by `e2e/k8s/build.sh`):
//!
//! - every flag upstream's `--help` lists is accepted by kproxy, and gives
//!   the same effective configuration (`--write-config-to`) as upstream
//!   with the same flag: a new upstream flag fails this test until kproxy
//!   and the table below know it;
//! - configuration files (unknown fields, bare addresses, IPv6 bind
//!   addresses, each mode, flags beside `--config`) give the same
//!   effective configuration, and the invalid ones fail in both.
//!
//! Needs the e2e binaries (root and Go); skips without, must run in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use kproxy_e2e::e2e_binaries;
use serde_json::Value;

/// A value for each upstream flag (`None`: a boolean given bare), chosen
/// to differ from the default so that its effect shows. `--help`,
/// `--version` and `--write-config-to` are run apart.
const SAMPLES: &[(&str, Option<&str>)] = &[
    ("bind-address", Some("10.1.2.3")),
    ("bind-address-hard-fail", None),
    ("boot-id-file", Some("/nonexistent/boot_id")),
    ("cleanup", None),
    ("cluster-cidr", Some("10.244.0.0/16,fd00:10:244::/56")),
    ("config", None),
    ("config-sync-period", Some("7m")),
    ("conntrack-max-per-core", Some("1000")),
    ("conntrack-min", Some("2000")),
    ("conntrack-tcp-be-liberal", None),
    ("conntrack-tcp-timeout-close-wait", Some("2h")),
    ("conntrack-tcp-timeout-established", Some("3h")),
    ("conntrack-udp-timeout", Some("5s")),
    ("conntrack-udp-timeout-stream", Some("2m")),
    ("detect-local-mode", Some("NodeCIDR")),
    ("feature-gates", Some("AllBeta=false")),
    ("healthz-bind-address", Some("127.0.0.2:1234")),
    ("healthz-port", Some("1234")),
    ("help", None),
    ("hostname-override", Some("Node-A")),
    ("init-only", None),
    ("iptables-localhost-nodeports", Some("false")),
    ("iptables-masquerade-bit", Some("3")),
    ("iptables-min-sync-period", Some("2s")),
    ("iptables-sync-period", Some("40s")),
    ("ipvs-exclude-cidrs", Some("10.0.0.0/8,fd00::/8")),
    ("ipvs-min-sync-period", Some("2s")),
    ("ipvs-scheduler", Some("lc")),
    ("ipvs-strict-arp", None),
    ("ipvs-sync-period", Some("40s")),
    ("ipvs-tcp-timeout", Some("1m")),
    ("ipvs-tcpfin-timeout", Some("30s")),
    ("ipvs-udp-timeout", Some("10s")),
    ("kube-api-burst", Some("20")),
    ("kube-api-content-type", Some("application/json")),
    ("kube-api-qps", Some("7.5")),
    ("kubeconfig", Some("/nonexistent/kubeconfig")),
    ("log-flush-frequency", Some("3s")),
    ("log-json-info-buffer-size", Some("0")),
    ("log-json-split-stream", Some("false")),
    ("log-text-info-buffer-size", Some("0")),
    ("log-text-split-stream", Some("false")),
    ("logging-format", Some("json")),
    ("machine-id-file", Some("/nonexistent/machine-id")),
    ("masquerade-all", None),
    ("master", Some("https://10.0.0.1:6443")),
    ("metrics-bind-address", Some("127.0.0.2:1235")),
    ("metrics-port", Some("1235")),
    ("nodeport-addresses", Some("10.0.0.0/8")),
    ("oom-score-adj", Some("-500")),
    ("pod-bridge-interface", Some("cbr0")),
    ("pod-interface-name-prefix", Some("veth")),
    ("profiling", None),
    ("proxy-mode", Some("nftables")),
    ("show-hidden-metrics-for-version", Some("1.33")),
    ("v", Some("3")),
    ("version", None),
    ("vmodule", Some("proxier=4")),
    ("write-config-to", None),
];

/// The flags of upstream's `--help`.
fn upstream_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-v, ").or_else(|| line.strip_prefix("-h, ")).unwrap_or(line);
            let name = line.strip_prefix("--")?.split([' ', '=']).next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// What `binary args... --write-config-to=<file>` exits with and writes
/// (as JSON), and its output for messages.
fn effective(binary: &str, args: &[String], out: &Path) -> (bool, Option<Value>, String) {
    let _ = std::fs::remove_file(out);
    let mut command = Command::new(binary);
    command.args(args).arg(format!("--write-config-to={}", out.display()));
    let result = command.output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    let written = std::fs::read_to_string(out).ok().map(|yaml| serde_saphyr::from_str::<Value>(&yaml).expect("YAML"));
    (result.status.success(), written, text)
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs both binaries with `args`; returns a difference, if any.
fn compare(upstream: &str, dir: &Path, args: &[String]) -> Option<String> {
    let (up_ok, up, up_text) = effective(upstream, args, &dir.join("upstream.yaml"));
    let (kp_ok, kp, kp_text) = effective(env!("CARGO_BIN_EXE_kproxy"), args, &dir.join("kproxy.yaml"));
    if up_ok != kp_ok {
        let tail = |t: &str| t.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        return Some(format!("{args:?}: upstream {} ({}), kproxy {} ({})", if up_ok { "succeeds" } else { "fails" }, tail(&up_text), if kp_ok { "succeeds" } else { "fails" }, tail(&kp_text)));
    }
    if !kp_ok && (kp_text.contains("panicked") || !kp_text.lines().all(|l| l.starts_with("kproxy: "))) {
        return Some(format!("{args:?}: kproxy's refusal is not one line per problem: {kp_text}"));
    }
    if up != kp {
        let (up, kp) = (up.unwrap_or_default(), kp.unwrap_or_default());
        let mut diffs = Vec::new();
        diff("", &up, &kp, &mut diffs);
        return Some(format!("{args:?}: effective configurations differ: {}", diffs.join("; ")));
    }
    None
}

/// The paths where `a` and `b` differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                diff(&p, x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: upstream {a}, kproxy {b}")),
        _ => {}
    }
}

#[test]
fn every_upstream_flag_is_accepted_with_upstream_s_meaning() {
    let Some(bins) = e2e_binaries("every_upstream_flag_is_accepted_with_upstream_s_meaning") else { return };
    let upstream = bins.path("kube-proxy");
    let help = Command::new(&upstream).arg("--help").output().expect("kube-proxy --help");
    let flags = upstream_flags(&String::from_utf8_lossy(&help.stdout));
    assert!(flags.len() > 50, "upstream --help parsed: {flags:?}");
    let dir = scratch();
    let mut failures = Vec::new();
    for flag in &flags {
        let Some((_, sample)) = SAMPLES.iter().find(|(name, _)| name == flag) else {
            failures.push(format!("--{flag}: new in upstream's --help; kproxy must accept it (and this table give it a value)"));
            continue;
        };
        let arg = match (flag.as_str(), sample) {
            ("help" | "version" | "write-config-to" | "config", _) => continue,
            (_, Some(value)) => format!("--{flag}={value}"),
            (_, None) => format!("--{flag}"),
        };
        failures.extend(compare(&upstream, &dir, &[arg]));
    }
    // Flags upstream reads together.
    for args in [
        &["--proxy-mode=ipvs", "--ipvs-sync-period=40s", "--ipvs-min-sync-period=2s", "--iptables-sync-period=50s", "--masquerade-all"][..],
        &["--proxy-mode=nftables", "--iptables-sync-period=50s", "--iptables-min-sync-period=3s", "--nodeport-addresses=10.0.0.0/8"],
        &["--proxy_mode=ipvs", "--v", "4"],
        &["--healthz-bind-address=0.0.0.0"],
        &["--oom-score-adj=5000"],
        &["--iptables-masquerade-bit=40"],
        &["--nodeport-addresses=primary,10.0.0.0/8"],
        &["--detect-local-mode=BridgeInterface"],
        &["--show-hidden-metrics-for-version=1.20"],
        &["--iptables-min-sync-period=1m"],
    ] {
        failures.extend(compare(&upstream, &dir, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
    }
    // kproxy prints its version and help, and exits 0.
    for arg in ["--help", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy")).arg(arg).output().unwrap();
        if !out.status.success() || out.stdout.is_empty() {
            failures.push(format!("kproxy {arg}: {out:?}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "kproxy differs from upstream kube-proxy:\n{}", failures.join("\n"));
}

#[test]
fn configuration_files_mean_what_they_mean_to_upstream() {
    let Some(bins) = e2e_binaries("configuration_files_mean_what_they_mean_to_upstream") else { return };
    let upstream = bins.path("kube-proxy");
    let dir = scratch().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    const HEAD: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    let kubeadm = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kubeadm-config.yaml")).unwrap();
    let files: Vec<(&str, String, &[&str])> = vec![
        ("minimal", HEAD.to_string(), &[]),
        ("kubeadm", kubeadm, &[]),
        ("newer release", format!("{HEAD}mode: nftables\nfooBar: 1\nnftables:\n  bogus: 2\n  syncPeriod: 50h\nhealthzBindAddress: 0.0.0.0\n"), &[]),
        ("ipv6 bind address", format!("{HEAD}bindAddress: \"::1\"\nhealthzBindAddress: \"::2\"\n"), &[]),
        ("ipvs", format!("{HEAD}mode: ipvs\nipvs:\n  scheduler: wrr\n  tcpTimeout: 10s\n  excludeCIDRs: [10.0.0.0/8]\niptables:\n  masqueradeAll: true\n"), &[]),
        ("explicit zeros", format!("{HEAD}conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\nclientConnection:\n  qps: 0\n"), &[]),
        ("flags beside the file", format!("{HEAD}mode: iptables\n"), &["--proxy-mode=ipvs", "--masquerade-all", "-v=4", "--hostname-override=Node-B", "--logging-format=json"]),
        ("out of range", format!("{HEAD}oomScoreAdj: 5000\nconfigSyncPeriod: -1s\n"), &[]),
        ("huge duration", format!("{HEAD}nftables:\n  syncPeriod: 99999999999999999999h\n"), &[]),
        ("primary and a CIDR", format!("{HEAD}nodePortAddresses: [primary, 10.0.0.0/8]\n"), &[]),
        ("no kind", "mode: ipvs\n".to_string(), &[]),
        ("a Kubelet's file", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n".to_string(), &[]),
        ("wrong type", format!("{HEAD}iptables:\n  masqueradeAll: maybe\n"), &[]),
        ("min above sync", format!("{HEAD}iptables:\n  minSyncPeriod: 1m\n"), &[]),
    ];
    let mut failures = Vec::new();
    for (what, text, extra) in files {
        let file = dir.join("config.yaml");
        std::fs::write(&file, text).unwrap();
        let mut args = vec![format!("--config={}", file.display())];
        args.extend(extra.iter().map(|a| a.to_string()));
        failures.extend(compare(&upstream, &dir, &args).map(|d| format!("{what}: {d}")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "kproxy reads files differently from upstream kube-proxy:\n{}", failures.join("\n"));
}
