//! The engine's one error type, and how it reads as a reason.
//!
//! Every fallible step inside the engine returns `Result<_, Error>` and
//! uses `?`. An operation's error becomes a [`Skip`] (a [`Reason`] and a
//! one-line detail, the [`error_chain`]) in one place only: the boundary,
//! `Cache::bounded` (`cache.rs`), through [`Error::into_skip`]. gc and
//! delete, administrative commands, return it as it is.
//!
//! "Decided not to" is kept apart from "failed": [`Error::Declined`] holds
//! the first (a dir that is empty or unchanged, a tree still incomplete,
//! nothing stored), every other variant the second.

use std::io;

use sandcache_archive::{ExtractError, WalkError, WriteError};
use sandcache_store::StoreError;

use crate::outcome::{Reason, Skip};

/// Why an operation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing failed: the operation decided not to act.
    #[error(transparent)]
    Declined(#[from] Declined),
    /// No cache store is configured.
    #[error("no cache store configured")]
    Disabled,
    /// The cache's configuration is unusable (a bad key, a bad store): the
    /// skip every operation of it gives.
    #[error("{}", .0.detail)]
    Unusable(Skip),
    /// An option out of its range.
    #[error("{0}")]
    Config(String),
    /// The store failed, or does not hold the object.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What a generation holds is corrupt, unsafe or over a limit, or
    /// writing it failed (the archive crate's words).
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// Reading the dir's tree failed, or found it unsafe or over a limit.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// Writing a single archive failed: reading the tree, or the stream.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Stored data that is not what it says it is.
    #[error("{0}")]
    Corrupt(String),
    /// Stored data over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// The dir is somewhere the engine does not write or read through.
    #[error("{0}")]
    Unsafe(String),
    /// The store changed under the operation: a concurrent gc, a snapshot
    /// still writing.
    #[error("{0}")]
    Raced(String),
    /// The target dir did not resolve (`unsafe` when the cause is an
    /// [`UntrustedSymlink`] among its parents).
    #[error("target dir")]
    Target(#[source] io::Error),
    /// Another sandcache held the dir's lock past the deadline.
    #[error(transparent)]
    Locked(io::Error),
    /// Local I/O: `what` failed.
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The operation's cancel flag was seen (its deadline passed).
    #[error("restore cancelled")]
    Cancelled,
    /// A blocking thread was cancelled before it answered.
    #[error("{what} failed")]
    Join {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A bug: a thread that panicked, logged when it was caught.
    #[error("{0}")]
    Bug(String),
    /// `what` did not happen because of `source`, whose reason it keeps.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<Error>,
    },
}

/// What an operation decided not to do. Nothing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Declined {
    /// Nothing usable is stored: a first wake-up, or an object a
    /// generation names is gone.
    #[error("{0}")]
    NotFound(String),
    /// Snapshot: the dir is missing or holds no files.
    #[error("{0}")]
    Empty(String),
    /// Snapshot: nothing changed since the last restore or snapshot.
    #[error("{0}")]
    Unchanged(String),
    /// Snapshot: the dir's last restore has not landed its tail.
    #[error("{0}")]
    Incomplete(String),
}

impl Declined {
    fn reason(&self) -> Reason {
        match self {
            Declined::NotFound(_) => Reason::NotFound,
            Declined::Empty(_) => Reason::Empty,
            Declined::Unchanged(_) => Reason::Unchanged,
            Declined::Incomplete(_) => Reason::Incomplete,
        }
    }
}

impl Error {
    /// The reason an outcome gives for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Declined(d) => d.reason(),
            Error::Disabled => Reason::Disabled,
            Error::Unusable(skip) => skip.reason,
            Error::Config(_) => Reason::Config,
            Error::Store(e) => match e {
                StoreError::NotFound { .. } => Reason::NotFound,
                StoreError::TimedOut { .. } => Reason::TimedOut,
                StoreError::InvalidKey { .. } | StoreError::InvalidSpec { .. } => Reason::Config,
                _ => Reason::StoreError,
            },
            Error::Extract(e) => match e {
                ExtractError::Corrupt { .. } => Reason::Corrupt,
                ExtractError::Unsafe { .. } => Reason::Unsafe,
                ExtractError::Limit { .. } => Reason::TooLarge,
                ExtractError::Io { .. } => Reason::IoError,
                ExtractError::Cancelled => Reason::TimedOut,
            },
            Error::Walk(e) | Error::Write(WriteError::Walk(e)) => walk_reason(e),
            Error::Write(WriteError::Sink(_)) => Reason::IoError,
            Error::Corrupt(_) => Reason::Corrupt,
            Error::TooLarge(_) => Reason::TooLarge,
            Error::Unsafe(_) => Reason::Unsafe,
            Error::Raced(_) => Reason::StoreError,
            Error::Target(e) => target_reason(e),
            Error::Locked(_) | Error::Cancelled => Reason::TimedOut,
            Error::Io { .. } | Error::Join { .. } => Reason::IoError,
            Error::Bug(_) => Reason::Internal,
            Error::Context { source, .. } => source.reason(),
        }
    }

    /// The skip this error ends an operation with: its reason, and the
    /// error with its sources as the detail. For the boundary alone.
    pub(crate) fn into_skip(self) -> Skip {
        Skip::new(self.reason(), error_chain(&self))
    }

    /// This error as the cause of `what` not happening.
    pub(crate) fn context(self, what: impl Into<String>) -> Error {
        Error::Context { what: what.into(), source: Box::new(self) }
    }

    /// Local I/O failing in `what`, for `map_err`.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }

    /// A blocking thread, `what`, that ended without an answer: a panic is
    /// a bug (logged now), a cancellation an I/O failure.
    pub(crate) fn joined(what: &'static str, e: tokio::task::JoinError) -> Error {
        match e.try_into_panic() {
            Ok(payload) => Error::Bug(Skip::panicked(what, payload.as_ref()).detail),
            Err(source) => Error::Join { what, source },
        }
    }

    /// Taking the dir's lock failed: waiting past the deadline is
    /// `timed_out`, anything else `io_error`.
    pub(crate) fn lock(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::TimedOut => Error::Locked(e),
            _ => Error::Io { what: "lock", source: e },
        }
    }
}

/// A failed walk as a reason: a symlinked dir, or an entry that turned into
/// a symlink, FIFO or device while it was read, is `unsafe`; a limit is
/// `too_large`; cancellation is the deadline's.
fn walk_reason(e: &WalkError) -> Reason {
    match e {
        WalkError::Io { .. } | WalkError::Changed { .. } => Reason::IoError,
        WalkError::Unsafe { .. } => Reason::Unsafe,
        WalkError::Limit { .. } => Reason::TooLarge,
        WalkError::Cancelled => Reason::TimedOut,
    }
}

/// A symlink among a dir's parents that neither root nor we made: a restore
/// or snapshot of the dir is `unsafe`, never done through it.
#[derive(Debug)]
pub(crate) struct UntrustedSymlink(pub(crate) String);

impl std::fmt::Display for UntrustedSymlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UntrustedSymlink {}

/// The reason a dir that did not resolve is skipped with: `unsafe` for an
/// [`UntrustedSymlink`], `io_error` otherwise.
pub(crate) fn target_reason(e: &io::Error) -> Reason {
    match e.get_ref().is_some_and(|inner| inner.is::<UntrustedSymlink>()) {
        true => Reason::Unsafe,
        false => Reason::IoError,
    }
}

/// An error and its sources, `: `-joined, for one-line reasons.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
