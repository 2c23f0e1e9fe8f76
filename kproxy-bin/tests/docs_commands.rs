//! Every command the docs show (the `sh` blocks of the READMEs and
//! BENCHMARKS.md, and the examples table) is run here as written, or is
//! named with the test or script that runs it. A command this test does
//! not know fails it, so a new one in the docs needs a runner too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/debug`, where cargo put this test and the examples it built.
fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The commands of a Markdown file: lines of its `sh` blocks that are not
/// comments, and the backquoted last cell of its table rows that start
/// with a command.
fn commands(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        if line.starts_with("```sh") {
            in_sh = true;
        } else if line.starts_with("```") {
            in_sh = false;
        } else if in_sh && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            out.push(line.trim().to_string());
        } else if line.starts_with('|') {
            if let Some(cell) = line.trim_end_matches('|').rsplit('|').next().map(str::trim) {
                let cell = cell.trim_matches('`');
                if ["cargo ", "ip netns ", "bash "].iter().any(|p| cell.starts_with(p)) {
                    out.push(cell.to_string());
                }
            }
        }
    }
    out
}

/// Runs `program args` from the repository root with a generous timeout;
/// it must succeed and, when `prints`, print something.
fn run(program: &Path, args: &[String], prints: bool) -> Result<String, String> {
    let mut child = Command::new(program).args(args).current_dir(root()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("{}: {e}", program.display()))?;
    let start = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("still running after 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() && (!prints || !out.stdout.is_empty()) {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()))
    }
}

/// Commands run elsewhere, by prefix, with what runs them.
const ELSEWHERE: &[(&str, &str)] = &[
    ("target/debug/kproxy diagnose ", "needs live rules: standalone_traffic.rs runs kproxy diagnose on the example cluster, before and after drift"),
    ("target/debug/kproxy trace ", "needs live rules: standalone_traffic.rs and e2e_trace.rs run kproxy trace on every case of their scenarios"),
    ("bash scripts/demo.sh", "scripts/test.sh runs the demo and checks every answer"),
    ("bash scripts/test.sh", ".ci/run runs it"),
    ("cargo build -p kproxy-bin", "every cargo test builds it"),
    ("cargo build -p kproxy-examples --example embed_agent", "cargo test builds every example; it needs a cluster to run, and kproxy-e2e/tests/agent_in_process.rs runs the same pieces in process against a real API server"),
    ("cargo build --release -p kproxy-bin", "a benchmark's build (BENCHMARKS.md)"),
    ("cargo test -p kproxy-userspace", "scripts/test.sh's cargo test runs every crate of the workspace"),
    ("cargo run --release ", "a benchmark, run by hand; results in BENCHMARKS.md; each has a smoke run at a tiny size in CI (bench_smoke.rs, e2e_benchmarks.rs, scripts/test-ipvs-vm.sh and the standalone and userspace benchmark tests)"),
    ("cargo build --release -p kproxy-backend-ipvs --example kproxy-ipvs-bench", "the IPVS benchmark's build (BENCHMARKS.md)"),
    ("bash scripts/ipvs-vm.sh target/release/examples/", "the IPVS benchmark in the VM (BENCHMARKS.md); scripts/test-ipvs-vm.sh runs the same VM in CI, and the benchmark in it at 20 Services"),
    ("KPROXY_DIFF_SEED=", "the differential test, which CI runs at its default size (kproxy-bin/tests/e2e_differential.rs)"),
    ("KPROXY_SOAK_SECONDS=", "the soak test, which CI runs for 60 s (kproxy-bin/tests/e2e_soak.rs)"),
    ("ip netns exec NS target/debug/examples/kproxy-nft-scenario", "runs until stopped; the nftables kernel tests program every scenario the same way"),
    ("docker build -f deploy/Dockerfile", "needs a container daemon; scripts/test-dockerfile.sh builds the same file with buildah in CI and runs the image"),
    ("bash scripts/test-dockerfile.sh", "scripts/test.sh runs it in CI"),
    ("python3 scripts/image.py", "kproxy-bin/tests/image.rs builds the image twice and runs its tools; e2e/node/cluster.sh builds it for the node tests"),
    ("KEEP=1 bash e2e/node/conformance.sh", "scripts/test.sh runs e2e/node/test.sh in CI, which runs conformance.sh the same way"),
    ("bash e2e/node/", "scripts/test.sh runs e2e/node/test.sh in CI, which runs cluster.sh, conformance.sh and takeover.sh"),
    ("kubectl ", "needs a cluster; e2e/node/cluster.sh applies deploy/ with kubectl on real nodes, and e2e/node/takeover.sh swaps kube-proxy's DaemonSet for kproxy's"),
];

#[test]
fn every_command_in_the_docs_runs_or_names_its_runner() {
    let mut failures = Vec::new();
    let mut ran = 0;
    let examples = target_debug().join("examples");
    for file in ["README.md", "examples/README.md", "deploy/README.md", "BENCHMARKS.md", "TESTING.md"] {
        for command in commands(file) {
            let words: Vec<String> = command.split_whitespace().map(String::from).collect();
            let result = if ELSEWHERE.iter().any(|(prefix, _)| command.starts_with(prefix)) {
                Ok(())
            } else if let Some(rest) = command.strip_prefix("target/debug/kproxy ") {
                let mut args: Vec<String> = rest.split_whitespace().map(|w| w.replace("~/.kube/config", "/nonexistent/kubeconfig")).collect();
                let dry = args.iter().any(|a| a == "--dry-run");
                if !dry {
                    // A real run (root, a cluster): its flags must parse
                    // into a valid configuration.
                    args.push(format!("--write-config-to={}", std::env::temp_dir().join(format!("kproxy-docs-{}.yaml", std::process::id())).display()));
                    args.push("-v=1".into());
                }
                ran += 1;
                run(Path::new(BIN), &args, dry).map(|_| ())
            } else if words.len() > 4 && words[..2] == ["cargo", "run"] && words[2] == "-p" && words[4] == "--example" {
                let name = &words[5];
                let args: Vec<String> = words.iter().skip_while(|w| *w != "--").skip(1).cloned().collect();
                let binary = examples.join(name);
                if !binary.exists() {
                    Err(format!("{} was not built (cargo test builds every example)", binary.display()))
                } else {
                    ran += 1;
                    run(&binary, &args, true).map(|_| ())
                }
            } else {
                Err("not run by this test and not named in ELSEWHERE".into())
            };
            if let Err(e) = result {
                failures.push(format!("{file}: `{command}`: {e}"));
            }
        }
    }
    assert!(ran >= 8, "too few commands found: {ran}");
    assert!(failures.is_empty(), "doc commands that do not work as written:\n{}", failures.join("\n"));
}
