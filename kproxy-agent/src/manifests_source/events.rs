//! A directory's file events (inotify), so that standalone mode sees a
//! manifest change at once instead of at its next one-second poll (which
//! stays, as the fallback for filesystems without events).
//!
//! A thread blocks on the inotify descriptor and wakes the async side
//! through a channel (no unsafe registration with the reactor).

use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

/// How long after an event the reload waits for the writer to finish.
const QUIET: Duration = Duration::from_millis(20);

/// Events of one directory.
#[derive(Debug)]
pub struct DirEvents {
    rx: mpsc::Receiver<()>,
}

impl DirEvents {
    /// Watches `dir` for files written, created, moved in or out, removed,
    /// or changed in their metadata (a ConfigMap's symlink swap is a move).
    pub fn watch(dir: &Path) -> Result<DirEvents, String> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ATTRIB;
        inotify.add_watch(dir, mask).map_err(|e| format!("inotify watch of {}: {e}", dir.display()))?;
        let (tx, rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("manifest-events".into())
            .spawn(move || {
                // Ends when the receiver is gone (the next event finds it so).
                while inotify.read_events().is_ok() {
                    // A short quiet moment, so that a burst of writes (an
                    // editor's, a `kubectl` dump's) is mostly one reload;
                    // events during it are one more wake-up at most.
                    std::thread::sleep(QUIET);
                    match tx.try_send(()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                        Err(mpsc::error::TrySendError::Closed(())) => return,
                    }
                }
            })
            .map_err(|e| format!("inotify thread: {e}"))?;
        Ok(DirEvents { rx })
    }

    /// Waits for the next change (and its quiet moment). Cancel-safe: a
    /// change is not lost when the wait is dropped in a `select!`.
    pub async fn changed(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_in_the_directory_is_seen_and_a_quiet_one_is_not() {
        let dir = std::env::temp_dir().join(format!("kproxy-dir-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut events = DirEvents::watch(&dir).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), events.changed()).await.is_err(), "nothing happened");
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        tokio::time::timeout(Duration::from_secs(30), events.changed()).await.expect("the write is seen");
        std::fs::rename(dir.join("a.yaml"), dir.join("b.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(30), events.changed()).await.expect("the move is seen");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
