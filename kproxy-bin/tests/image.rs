//! kproxy's container image, built by `scripts/image.py` from Debian
//! packages with no registry and no container daemon: the same inputs give
//! the same digest, and every tool kproxy runs works inside the image's
//! root filesystem (all its libraries are there).

use std::path::{Path, PathBuf};
use std::process::Command;

use kproxy_testkit::root_tests_enabled;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the image from `binary` into `out`; returns the digest it prints.
fn build(binary: &Path, out: &Path) -> String {
    let o = Command::new("python3")
        .arg(repo().join("scripts/image.py"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "image.py failed: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    stdout.lines().last().unwrap().to_string()
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A directory removed at the end, also on failure.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_image_is_reproducible_and_its_tools_run() {
    let tools = ["python3", "apt-get", "apt-cache", "dpkg-deb", "objcopy", "tar", "chroot"];
    if !root_tests_enabled("the_image_is_reproducible_and_its_tools_run", &tools) {
        return;
    }
    let dir = Scratch(std::env::temp_dir().join(format!("kproxy-image-test-{}", std::process::id())));
    std::fs::create_dir_all(dir.path()).unwrap();
    let binary = dir.path().join("kproxy");
    run(Command::new("objcopy").arg("--strip-debug").arg(BIN).arg(&binary));
    let first = build(&binary, &dir.path().join("a.tar"));
    let second = build(&binary, &dir.path().join("b.tar"));
    assert!(first.starts_with("sha256:") && first.len() == 71, "a digest: {first}");
    assert_eq!(first, second, "the same inputs give the same image");
    let a = std::fs::read(dir.path().join("a.tar")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("b.tar")).unwrap(), "byte for byte");

    // Unpack the archive's layers in order, as a runtime would.
    let oci = dir.path().join("oci");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&oci).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar").arg("-xf").arg(dir.path().join("a.tar")).arg("-C").arg(&oci));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"]["io.containerd.image.name"], "localhost/kproxy:0.1.0");
    assert_eq!(entry["digest"], first.as_str());
    let blob = |digest: &str| oci.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&first)).unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()).unwrap();
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/kproxy");
    for layer in manifest["layers"].as_array().unwrap() {
        run(Command::new("tar").arg("-xzf").arg(blob(layer["digest"].as_str().unwrap())).arg("-C").arg(&rootfs));
    }
    let packages = std::fs::read_to_string(rootfs.join("usr/share/kproxy/packages.txt")).unwrap();
    for pkg in ["nftables ", "iptables ", "ipset ", "conntrack ", "iproute2 ", "libc6 "] {
        assert!(packages.lines().any(|l| l.starts_with(pkg)), "{pkg}in {packages}");
    }
    // Every tool kproxy's backends run, and kproxy itself, inside the image.
    for argv in [
        &["/usr/local/bin/kproxy", "--version"][..],
        &["/usr/sbin/nft", "--version"],
        &["/usr/sbin/iptables-nft-save", "--version"],
        &["/usr/sbin/iptables-legacy-restore", "--version"],
        &["/usr/sbin/ip6tables-nft-restore", "--version"],
        &["/usr/sbin/iptables", "--version"],
        &["/usr/sbin/ipset", "--version"],
        &["/usr/sbin/conntrack", "--version"],
        &["/usr/bin/ip", "-V"],
        &["/sbin/ip", "-V"],
    ] {
        // Exit status 0: the program and every library it links are there.
        run(Command::new("chroot").arg(&rootfs).args(argv));
    }
}
