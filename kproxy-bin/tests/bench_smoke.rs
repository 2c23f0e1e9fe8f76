//! The backend benchmark commands (BENCHMARKS.md) run at a tiny size, so
//! they cannot rot: `kproxy-nft-bench`, `kproxy-iptables-bench` (both
//! flavours) and `kproxy-conntrack-bench`, each in its own private network
//! namespace, printing its table row. (`kproxy-ipvs-bench` needs the IPVS
//! VM: `scripts/test-ipvs-vm.sh` runs it there.) Needs root; must run in CI.

use std::path::PathBuf;
use std::process::Command;

use kproxy_testkit::kernel_tests_enabled;

/// An example as `cargo test` of the workspace builds it.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("own path");
    let path = deps.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{}: not built (cargo test --workspace builds the examples)", path.display());
    path
}

/// Runs `name ARGS`; returns its standard output, failing on a failed run.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example(name)).args(args).output().unwrap_or_else(|e| panic!("{name}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} {args:?}: {}\n{stdout}\n{stderr}", out.status);
    println!("{stdout}");
    stdout.into_owned()
}

/// The cells of the table row that starts with `start`.
fn row(stdout: &str, start: &str) -> Vec<String> {
    let line = stdout.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no row {start:?} in:\n{stdout}"));
    line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn the_nftables_benchmark_runs_at_a_tiny_size() {
    if !kernel_tests_enabled("the_nftables_benchmark_runs_at_a_tiny_size") {
        return;
    }
    let out = run("kproxy-nft-bench", &["20", "2"]);
    let cells = row(&out, "| 20 | 2 |");
    assert!(cells[2].ends_with(" s") && cells[7].ends_with(" MiB"), "{cells:?}");
    // 20 Services × 2 endpoints: more elements than Services.
    assert!(cells[8].parse::<usize>().is_ok_and(|n| n > 20), "{cells:?}");
}

#[test]
fn the_iptables_benchmark_runs_at_a_tiny_size_in_both_flavours() {
    if !kernel_tests_enabled("the_iptables_benchmark_runs_at_a_tiny_size_in_both_flavours") {
        return;
    }
    let out = run("kproxy-iptables-bench", &["20", "2", "legacy,nft"]);
    for flavour in ["legacy", "nft"] {
        let cells = row(&out, &format!("| {flavour} | 20 | 2 |"));
        assert!(cells[3].ends_with(" s"), "{cells:?}");
    }
}

#[test]
fn the_conntrack_benchmark_runs_at_a_tiny_size() {
    if !kernel_tests_enabled("the_conntrack_benchmark_runs_at_a_tiny_size") {
        return;
    }
    let out = run("kproxy-conntrack-bench", &["100"]);
    // 100 entries, half of them to the endpoint that is gone: 50 deleted.
    let row = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|w| w.first() == Some(&"100"));
    assert!(row.is_some_and(|w| w.get(1) == Some(&"50")), "no row for 100 entries with 50 stale:\n{out}");
    assert!(out.contains("one `conntrack -D` process per entry"), "{out}");
}
