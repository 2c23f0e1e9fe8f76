//! The real Kubernetes binaries, built by `e2e/k8s/build.sh` into a cache
//! outside the repository and reused.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The directory holding `etcd`, `kube-apiserver`, `kube-proxy` and
    /// `kubectl`.
    pub dir: PathBuf,
}

impl Binaries {
    /// The path of one binary.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binaries, building them if needed (`e2e/k8s/build.sh`, a no-op
/// when the cache is warm). None — with a `SKIPPED` line — when this
/// machine cannot run the e2e suite (not root, or no Go); in CI
/// (`CI=true`) that panics instead, since the suite must run there.
pub fn e2e_binaries(test: &str) -> Option<Binaries> {
    if !kproxy_testkit::kernel_tests_enabled(test) {
        return None;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let have_go = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    if !have_go && !in_ci {
        kproxy_testkit::skipped(test, "the e2e suite needs Go to build kube-apiserver, etcd and kube-proxy");
        return None;
    }
    let out = Command::new("bash").arg(repo_root().join("e2e/k8s/build.sh")).output();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let dir = stdout.lines().last().unwrap_or_default().trim().to_string();
            Some(Binaries { dir: PathBuf::from(dir) })
        }
        Ok(o) => panic!("{test}: e2e/k8s/build.sh failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default()),
        Err(e) => panic!("{test}: cannot run e2e/k8s/build.sh: {e}"),
    }
}
