//! The binary as a user runs it: every mistake is one line naming the
//! problem and a non-zero exit, never a panic; the dry run prints what the
//! first sync would program without touching the kernel.

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

fn example_cluster() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster")
}

fn kproxy(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").output().expect("run kproxy")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts a failure with exactly one line on stderr mentioning `needle`.
fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
}

const HEAD: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

/// As upstream's lenient decoding: a field kproxy does not know (a
/// misspelling, or a newer release's) is one warning naming it and the
/// file, and the rest of the file applies.
#[test]
fn an_unknown_config_field_is_one_warning_and_the_rest_applies() {
    let dir = tempdir("misspelled");
    let file = dir.join("config.yaml");
    std::fs::write(&file, format!("{HEAD}clusterCidr: 10.0.0.0/8\nmode: ipvs\n")).unwrap();
    let out_file = dir.join("out.yaml");
    let out = kproxy(&["--config", file.to_str().unwrap(), "--write-config-to", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with('W')).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("config.yaml: unknown field \\\"clusterCidr\\\""), "{stderr}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains("mode: ipvs") && !written.contains("clusterCidr"), "{written}");
}

/// Endless, huge or binary files, and durations past Go's range, are one
/// line naming the file and never a hang or a panic.
#[test]
fn hostile_config_files_are_one_line_errors() {
    fails_with(&kproxy(&["--config", "/dev/zero"]), "/dev/zero: larger than");
    let dir = tempdir("hostile");
    let file = dir.join("config.yaml");
    for (body, needle) in [
        ("nftables:\n  syncPeriod: 99999999999999999999h\n", "time: invalid duration"),
        ("conntrack:\n  udpTimeout: 5000000000000000h\n", "time: invalid duration"),
        ("ipvs:\n  tcpTimeout: 99999999999999999999h\n", "time: invalid duration"),
        ("oomScoreAdj: 5000\n", "oomScoreAdj: 5000 must be within the range [-1000, 1000]"),
        ("configSyncPeriod: -1s\n", "configSyncPeriod: -1s must be greater than 0"),
    ] {
        std::fs::write(&file, format!("{HEAD}{body}")).unwrap();
        fails_with(&kproxy(&["--config", file.to_str().unwrap()]), needle);
    }
    std::fs::write(&file, [0xffu8, 0xfe, 0x00]).unwrap();
    fails_with(&kproxy(&["--config", file.to_str().unwrap()]), "not UTF-8");
    fails_with(&kproxy(&["--conntrack-udp-timeout=99999999999999999999h"]), "--conntrack-udp-timeout");
    // 50 years: a valid Go duration; the run must not overflow on it.
    std::fs::write(&file, format!("{HEAD}mode: nftables\nnftables:\n  syncPeriod: 438000h\n")).unwrap();
    let out = kproxy(&["--config", file.to_str().unwrap(), "--hostname-override", "n", "--manifests", example_cluster().to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
}

#[test]
fn a_wrong_type_is_an_error() {
    let dir = tempdir("wrongtype");
    let file = dir.join("config.yaml");
    std::fs::write(&file, format!("{HEAD}nftables:\n  masqueradeBit: lots\n")).unwrap();
    fails_with(&kproxy(&["--config", file.to_str().unwrap()]), "config.yaml");
}

#[test]
fn out_of_range_and_malformed_values_are_errors() {
    let dir = tempdir("range");
    let file = dir.join("config.yaml");
    std::fs::write(&file, format!("{HEAD}mode: nftables\nnftables:\n  masqueradeBit: 40\n")).unwrap();
    fails_with(&kproxy(&["--config", file.to_str().unwrap()]), "nftables.masqueradeBit");
    fails_with(&kproxy(&["--cluster-cidr", "10.0.0.0/33", "--proxy-mode", "nftables"]), "clusterCIDR");
    fails_with(&kproxy(&["--nodeport-addresses", "banana", "--proxy-mode", "nftables"]), "nodePortAddresses");
}

#[test]
fn an_unknown_proxy_mode_is_an_error() {
    fails_with(&kproxy(&["--proxy-mode", "kernelspace"]), "mode: \"kernelspace\" must be ipvs, iptables, nftables, userspace or blank");
}

#[test]
fn the_ipvs_dry_run_prints_virtual_servers_sets_and_rules() {
    let cluster = example_cluster();
    let out = kproxy(&["--proxy-mode", "ipvs", "--ipvs-scheduler", "wlc", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "# addresses on kube-ipvs0\n10.96.0.10\n",
        "add KUBE-CLUSTER-IP 10.96.0.53,udp:53\n",
        "-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n",
        "-A -u 10.96.0.53:53 -s wlc -p 10800\n",
        "-a -u 10.96.0.53:53 -r 10.244.1.53:5353 -m -w 1\n",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
}

#[test]
fn a_bad_ipvs_setting_is_one_line_naming_it() {
    let cluster = example_cluster();
    let run = |extra: &[&str]| {
        let mut args = vec!["--proxy-mode", "ipvs", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"];
        args.extend_from_slice(extra);
        kproxy(&args)
    };
    fails_with(&run(&["--ipvs-scheduler", "fifo"]), "ipvs.scheduler");
    fails_with(&run(&["--ipvs-tcp-timeout", "soon"]), "invalid argument \"soon\" for \"--ipvs-tcp-timeout\" flag");
    fails_with(&run(&["--ipvs-exclude-cidrs", "10.0.0.0/33"]), "ipvs.excludeCIDRs");
}

#[test]
fn the_iptables_dry_run_prints_upstreams_chains() {
    let cluster = example_cluster();
    let out = kproxy(&["--proxy-mode", "iptables", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("*nat") && stdout.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"), "{stdout}");
    assert!(stdout.contains("-d 10.96.0.10 --dport 80 -j KUBE-SVC-"), "the ClusterIP dispatches to its service chain: {stdout}");
    assert!(stdout.contains("-j DNAT --to-destination 10.244.1.10:8080"), "{stdout}");
    assert!(stdout.contains("-d 10.96.0.40 --dport 80 -j REJECT"), "the service without endpoints is rejected: {stdout}");
    // As upstream: localhost NodePorts are on by default in iptables mode,
    // with the localnet safeguard.
    assert!(stdout.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"), "NodePorts on every local address by default: {stdout}");
    assert!(stdout.contains("-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"), "{stdout}");

    let out = kproxy(&["--proxy-mode", "iptables", "--iptables-localhost-nodeports=false", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"), "every local address but loopback: {stdout}");
    assert!(!stdout.contains("KUBE-FIREWALL"), "no localnet safeguard without localhost NodePorts");
}

/// `kproxy --dry-run | head`: a reader that goes away ends kproxy quietly,
/// as command-line tools do (it once panicked with "Broken pipe").
#[test]
fn a_closed_stdout_ends_the_dry_run_quietly() {
    // More output than a pipe holds (64 KiB), so kproxy is still writing
    // when the reader goes away.
    let dir = tempdir("broken-pipe");
    let services: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"ns"}},"spec":{{"clusterIP":"10.96.{}.{}","ports":[{{"port":80,"protocol":"TCP"}}]}}}}"#, i / 250, i % 250 + 1))
        .collect();
    std::fs::write(dir.join("services.yaml"), services.join("\n---\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["--proxy-mode", "iptables", "--hostname-override", "node-a", "--manifests", dir.to_str().unwrap(), "--dry-run"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, as `head -1` would, then close the pipe.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with('#'), "{first}");
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

/// With `conntrack.tcpBeLiberal`, iptables mode leaves out the INVALID
/// drop in `KUBE-FORWARD`, as upstream.
#[test]
fn tcp_be_liberal_leaves_out_the_invalid_drop() {
    let cluster = example_cluster();
    let invalid = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP";
    let run = |extra: &[&str]| {
        let mut args = vec!["--proxy-mode", "iptables", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"];
        args.extend(extra);
        let out = kproxy(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&[]).contains(invalid), "the drop by default");
    let liberal = run(&["--conntrack-tcp-be-liberal"]);
    assert!(!liberal.contains("INVALID"), "{liberal}");
    assert!(liberal.contains("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\""), "{liberal}");
}

/// nodePortAddresses, as upstream reads it, in every mode: a range that
/// holds no node address serves no NodePort at all (iptables mode once
/// served them on every local address); a range that holds the node IP
/// serves it alone, without localhost NodePorts.
#[test]
fn nodeport_addresses_limit_nodeports_in_every_mode() {
    let cluster = example_cluster();
    let dry_run = |mode: &str, addresses: &str| {
        let out = kproxy(&["--proxy-mode", mode, "--nodeport-addresses", addresses, "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The example node's address is 192.168.50.2; `api` has NodePort 30080.
    let jump = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    let none = dry_run("iptables", "203.0.113.0/24");
    assert!(!none.contains(jump), "no jump to the NodePorts: {none}");
    assert!(!none.contains("KUBE-FIREWALL"), "no localhost NodePorts either: {none}");
    let some = dry_run("iptables", "192.168.50.0/24");
    assert!(some.contains(&format!("{jump} -d 192.168.50.2 -j KUBE-NODEPORTS")), "{some}");
    assert_eq!(some.matches(jump).count(), 1, "{some}");
    assert!(!some.contains("KUBE-FIREWALL"), "{some}");
    let nft_none = dry_run("nftables", "203.0.113.0/24");
    let nodeport_ips = nft_none.split("set nodeport-ips").nth(1).and_then(|rest| rest.split('}').next()).unwrap_or_default().to_string();
    assert!(!nodeport_ips.contains("elements"), "nftables: no NodePort address: {nft_none}");
    let ipvs_none = dry_run("ipvs", "203.0.113.0/24");
    assert!(!ipvs_none.contains("192.168.50.2:30080"), "ipvs: no virtual server on the node IP: {ipvs_none}");
    assert!(dry_run("ipvs", "192.168.50.0/24").contains("192.168.50.2:30080"), "ipvs: the node IP's virtual server");
}

#[test]
fn an_unreadable_or_invalid_kubeconfig_is_one_line_naming_it() {
    let base = ["--proxy-mode", "nftables", "--hostname-override", "n"];
    fails_with(&kproxy(&[&base[..], &["--kubeconfig", "/nonexistent/kubeconfig"]].concat()), "/nonexistent/kubeconfig");
    let dir = tempdir("kubeconfig");
    let file = dir.join("kubeconfig");
    std::fs::write(&file, "clusters: [[[\n").unwrap();
    fails_with(&kproxy(&[&base[..], &["--kubeconfig", file.to_str().unwrap()]].concat()), "kubeconfig");
    fails_with(&kproxy(&[&base[..], &["--master", "not a url"]].concat()), "--master");
}

#[test]
fn no_api_server_and_no_manifests_says_what_to_do() {
    let home = tempdir("home");
    let out = Command::new(BIN)
        .args(["--proxy-mode", "nftables", "--hostname-override", "n"])
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", &home)
        .output()
        .unwrap();
    fails_with(&out, "--manifests DIR");
    fails_with(&kproxy(&["--proxy-mode", "nftables", "--hostname-override", "n", "--dry-run"]), "--dry-run needs --manifests");
}

/// Runs kproxy in standalone mode with `path` as its whole PATH.
fn with_path(path: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(["--proxy-mode", "nftables", "--hostname-override", "n", "--manifests", example_cluster().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn missing_kernel_support_says_what_is_missing() {
    let empty = tempdir("empty-path");
    fails_with(&with_path(&empty), "needs the `nft` command");
    let old = tempdir("old-nft");
    let nft = old.join("nft");
    std::fs::write(&nft, "#!/bin/sh\necho 'nftables v0.9.8 (E.D.S.)'\n").unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fails_with(&with_path(&old), "nft 0.9.8 is too old");
}

#[test]
fn a_missing_manifests_directory_is_one_line() {
    fails_with(&kproxy(&["--proxy-mode", "nftables", "--hostname-override", "n", "--manifests", "/nonexistent/dir", "--dry-run"]), "/nonexistent/dir");
}

#[test]
fn the_dry_run_prints_the_first_sync_without_root() {
    let cluster = example_cluster();
    let out = kproxy(&["--proxy-mode", "nftables", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("table ip kproxy-a"));
    assert!(stdout.contains("10.96.0.10 . tcp . 80 . 0 : 10.244.1.10 . 8080") || stdout.contains("10.96.0.10 . tcp . 80 . 1 : 10.244.1.10 . 8080"));
    assert!(stdout.contains("10.96.0.40 . tcp . 80"), "the service without endpoints is rejected: {stdout}");
    assert!(stdout.contains("tcp . 30080"), "the NodePort is there");
}

#[test]
fn an_invalid_manifest_is_reported_and_the_others_still_count() {
    let dir = tempdir("manifests");
    for entry in std::fs::read_dir(example_cluster()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("broken.yaml"), "kind: Service\nmetadata: [this is not a map\n").unwrap();
    std::fs::write(dir.join("wrong.yaml"), "kind: Service\nmetadata:\n  name: x\nspec:\n  ports: 7\n").unwrap();
    let out = kproxy(&["--proxy-mode", "nftables", "--hostname-override", "node-a", "--manifests", dir.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml") && stderr.contains("wrong.yaml"), "both bad files are named: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.96.0.10 . tcp . 80"), "services from the good files survive");
}

#[test]
fn write_config_to_writes_the_effective_configuration() {
    let dir = tempdir("write");
    let out_file = dir.join("effective.yaml");
    let out = kproxy(&["--proxy-mode", "nftables", "--cluster-cidr", "10.244.0.0/16", "--write-config-to", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains("mode: nftables") && written.contains("clusterCIDR: 10.244.0.0/16"), "{written}");
    let again = kproxy(&["--config", out_file.to_str().unwrap(), "--write-config-to", dir.join("again.yaml").to_str().unwrap()]);
    assert!(again.status.success(), "the written file reads back: {}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn the_logging_format_comes_from_flags_or_the_file() {
    fails_with(&kproxy(&["--logging-format", "yaml"]), "logging.format: \"yaml\": Unsupported log format");
    // JSON logs: every stderr line of a dry run that warns is a JSON object.
    let dir = tempdir("json-logs");
    let config = dir.join("config.yaml");
    std::fs::write(&config, format!("{HEAD}logging:\n  format: json\n")).unwrap();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("bad.yaml"), "kind: Service\nspec: [\n").unwrap();
    let out = kproxy(&["--config", config.to_str().unwrap(), "--proxy-mode", "nftables", "--hostname-override", "n", "--manifests", manifests.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[test]
fn service_cidr_manifests_drop_unallocated_addresses_and_a_bad_range_is_named() {
    let cluster = example_cluster();
    let out = kproxy(&["--proxy-mode", "nftables", "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("ct state new ip daddr { 10.96.0.0/16 } drop").count(), 2, "forward and output: {stdout}");

    let dir = tempdir("cidrs");
    for entry in std::fs::read_dir(example_cluster()).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("service-cidr.yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let bad = "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: typo\nspec:\n  cidrs: [\"10.96.0.0/33\"]\n";
    std::fs::write(dir.join("cidr.yaml"), bad).unwrap();
    let out = kproxy(&["--proxy-mode", "nftables", "--hostname-override", "node-a", "--manifests", dir.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // klog quotes the message, so its own quotes are escaped.
    assert!(stderr.contains("cidr.yaml") && stderr.contains(r#"ServiceCIDR \"typo\": \"10.96.0.0/33\" is not a CIDR"#), "named: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("daddr {"), "no range, no drop: {stdout}");
    assert!(stdout.contains("10.96.0.10 . tcp . 80"), "the other files still count");
}

/// Logs as upstream writes them, into a pipe: klog's text layout (or
/// component-base's JSON), never colour codes; `-v=1` adds the flags given,
/// as upstream.
#[test]
fn logs_are_klog_s_layout_without_colour() {
    let cluster = example_cluster();
    let run = |extra: &[&str]| {
        let mut args = vec!["--proxy-mode", "nftables", "--hostname-override", "node-b", "--manifests", cluster.to_str().unwrap(), "--dry-run"];
        args.extend_from_slice(extra);
        let out = kproxy(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = run(&[]);
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");
    let warning = text.lines().find(|l| l.contains("another node's Node object")).unwrap_or_else(|| panic!("{text}"));
    // Wmmdd hh:mm:ss.uuuuuu PID file:line] "message" key="value"
    let (head, rest) = warning.split_once("] ").unwrap();
    let fields: Vec<&str> = head.split_whitespace().collect();
    assert!(fields[0].starts_with('W') && fields[0].len() == 5 && fields[0][1..].chars().all(|c| c.is_ascii_digit()), "{warning}");
    assert!(fields[1].len() == 15 && fields[1].as_bytes()[8] == b'.', "{warning}");
    assert!(fields[2].parse::<u32>().is_ok(), "the process ID: {warning}");
    assert_eq!(head.len() - head.trim_start_matches(|c: char| c != ' ').len(), 5, "{warning}");
    assert!(fields[3].contains(".rs:"), "{warning}");
    assert!(rest.starts_with("\"ignoring another node's Node object\" ") && rest.contains(" expected=\"node-b\""), "{warning}");
    assert!(!text.contains("FLAG: "), "flags only at -v=1: {text}");
    let verbose = run(&["-v=1"]);
    assert!(verbose.contains(r#""FLAG: --proxy-mode=\"nftables\"""#), "{verbose}");
    let json = run(&["--logging-format=json"]);
    let line: serde_json::Value = serde_json::from_str(json.lines().find(|l| l.contains("another node")).unwrap()).unwrap();
    assert!(line["ts"].is_f64() && line["caller"].as_str().unwrap().contains(".rs:") && line["v"] == 0 && line["expected"] == "node-b", "{line}");
}

#[test]
fn help_and_version_say_what_upstream_s_say() {
    let out = kproxy(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("--proxy-mode string") && help.contains("(default \"iptables\")"), "upstream's default mode: {help}");
    assert!(help.contains("--oom-score-adj int32") && help.contains("(default -999)"), "{help}");
    assert!(help.contains("--healthz-port int32") && help.contains("(DEPRECATED)"), "{help}");
    let out = kproxy(&["--version"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("kube-proxy v1.34.4"), "{out:?}");
    let out = kproxy(&["--healthz-port=1234", "--help"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Flag --healthz-port has been deprecated"), "upstream's warning: {out:?}");
}

/// The example cluster has a Service of each kind the README names,
/// and every mode's dry run programs them (the external IP included).
#[test]
fn the_example_cluster_has_every_kind_of_service() {
    let cluster = example_cluster();
    for mode in ["nftables", "iptables", "ipvs"] {
        let out = kproxy(&["--proxy-mode", mode, "--hostname-override", "node-a", "--manifests", cluster.to_str().unwrap(), "--dry-run"]);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for (what, needle) in [("the external IP", "192.0.2.10"), ("the UDP DNS service", "10.96.0.53"), ("the NodePort", "30080"), ("the load balancer", "198.51.100.7")] {
            assert!(stdout.contains(needle), "{mode}: {what} ({needle}) missing:\n{stdout}");
        }
    }
}

/// `kproxy diagnose` in userspace mode says it cannot trace instead of
/// reading another mode's rules.
#[test]
fn diagnose_in_userspace_mode_says_there_are_no_rules_to_trace() {
    let manifests = example_cluster();
    let out = kproxy(&["diagnose", "--manifests", manifests.to_str().unwrap(), "--proxy-mode", "userspace"]);
    fails_with(&out, "userspace mode forwards connections in the proxy itself");
}
