//! A directory's file events (inotify), so that standalone mode sees a
//! manifest change at once instead of at its next one-second poll (which
//! stays, as the fallback for filesystems without events).
//!
//! A thread blocks on the inotify descriptor and wakes the async side
//! through a channel (no unsafe registration with the reactor).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, InotifyEvent, Inotify};
use tokio::sync::mpsc;

/// How long a write under way (a file modified, not yet closed) may go on
/// before the reload runs anyway: a writer that keeps its file open is
/// read then (a half-written file withdraws nothing, and its next write
/// is one more reload).
const QUIET: Duration = Duration::from_millis(20);

/// Whether an event ends a change: a file closed after writing, moved in
/// or out (a ConfigMap's symlink swap, an editor's rename), removed, or
/// changed in its metadata. A bare write or a new file's creation is the
/// start of one, and waits for its end (up to [`QUIET`]).
fn ends_a_change(e: &InotifyEvent) -> bool {
    e.mask.intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ATTRIB)
}

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
                while let Ok(events) = inotify.read_events() {
                    // A change that has ended wakes the source at once; a
                    // write under way waits for its end, up to QUIET.
                    let mut ended = events.iter().any(ends_a_change);
                    let until = Instant::now() + QUIET;
                    while !ended {
                        let left = until.saturating_duration_since(Instant::now());
                        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
                        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                        if left.is_zero() || !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
                            break;
                        }
                        match inotify.read_events() {
                            Ok(more) => ended = more.iter().any(ends_a_change),
                            Err(_) => break,
                        }
                    }
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
        // A writer that keeps its file open: no close ever comes, and the
        // write is seen all the same.
        use std::io::Write;
        let mut open = std::fs::OpenOptions::new().append(true).open(dir.join("b.yaml")).unwrap();
        open.write_all(b"y").unwrap();
        tokio::time::timeout(Duration::from_secs(30), events.changed()).await.expect("a write still under way is seen");
        drop(open);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
