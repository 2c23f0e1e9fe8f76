//! A directory's file events (inotify), so that standalone mode sees a
//! manifest change at once instead of at its next one-second poll (which
//! stays, as the fallback for filesystems without events).

use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// The inotify instance, as tokio's reactor needs it.
#[derive(Debug)]
struct Fd(Inotify);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Events of one directory.
#[derive(Debug)]
pub struct DirEvents {
    fd: AsyncFd<Fd>,
}

impl DirEvents {
    /// Watches `dir` for files written, created, moved in or out, removed,
    /// or changed in their metadata (a ConfigMap's symlink swap is a move).
    pub fn watch(dir: &Path) -> Result<DirEvents, String> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ATTRIB;
        inotify.add_watch(dir, mask).map_err(|e| format!("inotify watch of {}: {e}", dir.display()))?;
        Ok(DirEvents { fd: AsyncFd::new(Fd(inotify)).map_err(|e| format!("inotify: {e}"))? })
    }

    /// Waits for the next change, then for a short quiet moment, so that a
    /// burst of writes (an editor's, a `kubectl` dump's) is one reload.
    pub async fn changed(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The burst's other events (the fd does not block; none is fine).
        let _ = self.fd.get_ref().0.read_events();
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
