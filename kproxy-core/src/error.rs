//! kproxy-core's error type.

use std::time::Duration;

/// What can go wrong in a proxier or the sync runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Programming the dataplane failed; the runner retries with backoff.
    #[error("{backend}: sync failed: {message}")]
    Sync {
        /// The backend that failed (`nftables`, `iptables`, ...).
        backend: &'static str,
        /// What went wrong, in one line.
        message: String,
        /// The underlying cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Removing the backend's rules failed.
    #[error("{backend}: cleanup failed: {message}")]
    Cleanup {
        /// The backend that failed.
        backend: &'static str,
        /// What went wrong, in one line.
        message: String,
        /// The underlying cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A runner setting is unusable.
    #[error("invalid runner setting: {0}")]
    InvalidRunnerSetting(String),
    /// The update stream ended before the initial lists were complete.
    #[error("update stream closed after {0:?} without the initial lists")]
    StreamClosedEarly(Duration),
}

impl Error {
    /// A sync failure with a message and an optional cause.
    pub fn sync(
        backend: &'static str,
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Sync {
            backend,
            message: message.into(),
            source,
        }
    }
}

/// kproxy-core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
