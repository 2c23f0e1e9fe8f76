//! The one kernel step: hand a rendered script to `nft -f -`, or delete
//! the table.

use std::process::Stdio;

use kproxy_core::IpFamily;
use tokio::io::AsyncWriteExt;

use crate::nft::{keyword, TABLE};

/// Runs `script` with `nft -f -` (one transaction); the error is nft's
/// own message, on one line.
pub async fn apply(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("nft: {}", err.split_whitespace().collect::<Vec<_>>().join(" ")))
    }
}

/// Deletes `family`'s table if it is there.
pub async fn delete_table(family: IpFamily) -> Result<(), String> {
    let kw = keyword(family);
    apply(&format!("add table {kw} {TABLE}\ndelete table {kw} {TABLE}\n")).await
}
