//! Network namespaces that clean up after themselves.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace this process created. Dropping it stops every
/// process started in it (by PID) and deletes it, also when a test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Vec<Child>,
}

/// Runs a command and returns its stdout, or an error naming the command
/// and its stderr.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// Creates a fresh namespace whose name contains `tag`, with loopback up.
    pub fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("kpt-{}-{}-{tag}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, children: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"])?;
        // IPv6 addresses usable at once (no duplicate address detection),
        // and no ICMP redirects: a node that routes a pod's packet back out
        // of the interface it came in on must not teach the pod to bypass
        // it, or replies would skip the node's conntrack.
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv4.conf.default.accept_redirects=0",
            // Every REJECT must be visible: no ICMP rate limiting.
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
        ])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts a long-running process inside the namespace and waits until
    /// it prints `ready`; returns its handle for [`Netns::kill`].
    pub fn spawn_ready(&mut self, args: &[&str]) -> Result<usize, String> {
        let mut child = self.start(args)?;
        let stdout = child.stdout.take().expect("piped");
        self.children.push(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("{} did not start: {line:?}", args.join(" ")));
        }
        Ok(self.children.len() - 1)
    }

    /// Starts a process inside the namespace without waiting for it.
    pub fn spawn(&mut self, args: &[&str]) -> Result<usize, String> {
        let child = self.start(args)?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Starts a long-running process inside the namespace with its stdout
    /// and stderr appended to `log` (for chatty servers); returns its
    /// handle.
    pub fn spawn_logged(&mut self, args: &[&str], log: &std::path::Path) -> Result<usize, String> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.join(" ")))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Starts `args` inside the namespace with stdout piped.
    fn start(&self, args: &[&str]) -> Result<Child, String> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.join(" ")))
    }

    /// Kills a process this namespace started (SIGKILL, by PID).
    pub fn kill(&mut self, handle: usize) {
        if let Some(child) = self.children.get_mut(handle) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID of a process this namespace started (`ip netns exec`
    /// execs the command, so it is the command's own PID).
    pub fn pid(&self, handle: usize) -> Option<u32> {
        self.children.get(handle).map(|c| c.id())
    }

    /// Waits up to `timeout` for a process this namespace started to exit;
    /// returns its status, or None if it is still running.
    pub fn wait_exit(&mut self, handle: usize, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let child = self.children.get_mut(handle)?;
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for a process started with [`Netns::spawn`] and returns what
    /// it printed.
    pub fn wait_output(&mut self, handle: usize) -> Result<String, String> {
        use std::io::Read;
        let child = self.children.get_mut(handle).ok_or("no such process")?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).map_err(|e| e.to_string())?;
        }
        child.wait().map_err(|e| e.to_string())?;
        Ok(out)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// The tools kernel tests run, with the argument that makes each print
/// its version (`bash scripts/install-deps.sh` installs them all).
const TOOLS: [(&str, &str); 7] = [
    ("nft", "--version"),
    ("ip", "-V"),
    ("iptables-nft", "--version"),
    ("iptables-legacy", "--version"),
    ("ipset", "--version"),
    ("conntrack", "--version"),
    ("python3", "--version"),
];

/// The kernel test tools missing here.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS.iter().filter(|(tool, arg)| run(&[tool, arg]).is_err()).map(|(tool, _)| *tool).collect()
}

/// Whether kernel tests can run here. They need root and the tools in
/// `scripts/install-deps.sh`; in CI (`CI=true`) they must run, so this
/// panics there instead of skipping.
pub fn kernel_tests_enabled(test: &str) -> bool {
    let why = if !is_root() {
        Some("not running as root".to_string())
    } else {
        let missing = missing_tools();
        (!missing.is_empty()).then(|| format!("missing {} (bash scripts/install-deps.sh installs them)", missing.join(", ")))
    };
    enabled_or_skipped(test, why)
}

/// Whether a test that needs root and the programs `tools` (looked up on
/// `PATH`) can run here. Like [`kernel_tests_enabled`], it panics in CI
/// instead of skipping.
pub fn root_tests_enabled(test: &str, tools: &[&str]) -> bool {
    let why = if !is_root() {
        Some("not running as root".to_string())
    } else {
        let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
        (!missing.is_empty()).then(|| format!("missing {} (bash scripts/install-deps.sh installs them)", missing.join(", ")))
    };
    enabled_or_skipped(test, why)
}

fn is_root() -> bool {
    run(&["id", "-u"]).is_ok_and(|u| u.trim() == "0")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// `true` when there is no reason not to run; otherwise says SKIPPED with
/// the reason (or, in CI, panics) and returns `false`.
fn enabled_or_skipped(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: this test must run in CI, but {why}");
    }
    skipped(test, &why);
    false
}

/// Says `SKIPPED TEST: WHY` on the process's real stderr, past the test
/// harness's capture (which hides `eprintln!` of passing tests), so
/// `scripts/test.sh` counts it and the reader sees why.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    // One write, starting on a line of its own even if the harness is
    // mid-line on the same pipe.
    let _ = std::io::stderr().write_all(format!("\nSKIPPED {test}: {why}\n").as_bytes());
}
