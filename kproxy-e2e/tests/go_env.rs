//! `e2e/go-env.sh`'s `out_dir`: the build scripts' output directory is
//! refused inside the repository before anything is created there, and
//! made (and printed absolute) anywhere else.

use std::path::Path;
use std::process::Command;

fn out_dir(dir: &Path) -> std::process::Output {
    let env = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/go-env.sh");
    Command::new("bash").arg("-c").arg(r#"source "$1" && out_dir "$2""#).arg("bash").arg(env).arg(dir).output().expect("bash runs")
}

#[test]
fn a_directory_inside_the_repository_is_refused_and_not_created() {
    let inside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/refused-out-dir/bin");
    let out = out_dir(&inside);
    assert!(!out.status.success(), "accepted: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to put binaries inside the repository"), "{out:?}");
    assert!(!inside.parent().unwrap().exists(), "out_dir created {} before refusing it", inside.display());
}

#[test]
fn a_directory_elsewhere_is_created_and_printed_absolute() {
    let base = std::env::temp_dir().join(format!("kproxy-out-dir-{}", std::process::id()));
    let out = out_dir(&base.join("a/b"));
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(Path::new(&printed).is_absolute() && Path::new(&printed).is_dir(), "{printed}");
    std::fs::remove_dir_all(&base).unwrap();
}
