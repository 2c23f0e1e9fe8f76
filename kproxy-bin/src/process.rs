//! The process-wide duties upstream kube-proxy has: its OOM score and
//! exiting when its configuration file changes.

use std::path::PathBuf;
use std::time::Duration;

/// Writes `value` to `/proc/self/oom_score_adj`, as upstream's OOM
/// adjuster does; a failure is logged at `-v=2` (debug), as upstream.
pub fn apply_oom_score_adj(value: i32) {
    match std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        Ok(()) => tracing::debug!(value, "applied oomScoreAdj"),
        Err(e) => tracing::debug!(error = %e, "Failed to apply OOMScore"),
    }
}

/// A file's content now (`None` when it cannot be read).
pub fn snapshot(path: &PathBuf) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Waits until the file at `path` differs from `start` (its content when
/// it was read: written, replaced, removed, or a ConfigMap's symlink
/// swapped), checking every second, and says so. Upstream exits on such a
/// change so that its DaemonSet restarts it with the new file; kproxy does
/// the same.
pub async fn file_changed(path: PathBuf, start: Option<Vec<u8>>) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if snapshot(&path) != start {
            return format!("content of the proxy server's configuration file was updated ({})", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewritten_or_removed_file_is_seen() {
        let dir = std::env::temp_dir().join(format!("kproxy-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "mode: nftables\n").unwrap();
        let watcher = tokio::spawn(file_changed(file.clone(), snapshot(&file)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!watcher.is_finished(), "an unchanged file is no change");
        std::fs::write(&file, "mode: ipvs\n").unwrap();
        let why = tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("seen").unwrap();
        assert!(why.contains("configuration file was updated"), "{why}");
        let watcher = tokio::spawn(file_changed(file.clone(), snapshot(&file)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::remove_file(&file).unwrap();
        tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("removal seen").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
