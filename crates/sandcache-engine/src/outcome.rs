//! What an operation ended as. Never an error: the cache is advisory.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The operation an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Restore,
    Snapshot,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Restore => "restore",
            Op::Snapshot => "snapshot",
        }
    }
}

/// Why an operation did nothing. Every variant ends in a cold start (restore)
/// or a kept previous cache (snapshot), never in a broken directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// No cache configured: nothing was called.
    Disabled,
    /// No cache under the key yet: a first wake-up.
    NotFound,
    /// The deadline passed, or the stream stalled past its idle timeout.
    TimedOut,
    /// The store failed: network, credentials, server errors.
    StoreError,
    /// The object is not a readable archive.
    Corrupt,
    /// The archive tried to write outside the target, or holds device nodes.
    Unsafe,
    /// The archive exceeds a size, entry-count or path limit.
    TooLarge,
    /// Local disk trouble: full, read-only, permissions.
    IoError,
    /// Snapshot: the directory is missing or holds no files.
    Empty,
    /// Snapshot: nothing changed since the last restore or snapshot.
    Unchanged,
    /// Snapshot: the dir's last restore put its hot files in place but not
    /// the rest (its second phase failed or was killed), or was a delta
    /// that did not complete; storing it would replace a good cache with a
    /// partial one. The next restore completes it.
    Incomplete,
    /// The configuration is unusable (bad key or store).
    Config,
    /// A bug in sandcache (a panic inside the store client, extraction or
    /// the engine), caught at the boundary and logged as an error: the
    /// operation is skipped like any other failure.
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Disabled => "disabled",
            Reason::NotFound => "not_found",
            Reason::TimedOut => "timed_out",
            Reason::StoreError => "store_error",
            Reason::Corrupt => "corrupt",
            Reason::Unsafe => "unsafe",
            Reason::TooLarge => "too_large",
            Reason::IoError => "io_error",
            Reason::Empty => "empty",
            Reason::Unchanged => "unchanged",
            Reason::Incomplete => "incomplete",
            Reason::Config => "config",
            Reason::Internal => "internal",
        }
    }

    /// Every reason, for metrics that pre-register their labels.
    pub const ALL: [Reason; 13] = [
        Reason::Disabled,
        Reason::NotFound,
        Reason::TimedOut,
        Reason::StoreError,
        Reason::Corrupt,
        Reason::Unsafe,
        Reason::TooLarge,
        Reason::IoError,
        Reason::Empty,
        Reason::Unchanged,
        Reason::Incomplete,
        Reason::Config,
        Reason::Internal,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A skip: the reason, and a human sentence with the cause chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: Reason,
    pub detail: String,
}

impl Skip {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Skip { reason, detail: detail.into() }
    }

    /// A panic caught in `what`: logged as the bug it is, skipped as
    /// `internal`.
    pub(crate) fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Skip::bug(format!("{what} panicked: {message}"))
    }

    /// A background thread that ended without an answer: a panic is a bug,
    /// a cancellation an I/O failure.
    pub(crate) fn joined(what: &str, e: tokio::task::JoinError) -> Self {
        match e.try_into_panic() {
            Ok(payload) => Skip::panicked(what, payload.as_ref()),
            Err(e) => Skip::new(Reason::IoError, format!("{what} failed: {e}")),
        }
    }

    fn bug(detail: String) -> Self {
        tracing::error!(target: "sandbox-cache", "bug: {detail}; skipped (the cache is advisory), please report it");
        Skip::new(Reason::Internal, format!("{detail} (a bug in sandcache)"))
    }
}

/// How a restore wrote the dir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// The whole generation, written into staging and swapped in.
    #[default]
    Full,
    /// Only what differs from the generation the dir holds, written in
    /// place, unit by unit.
    Delta,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Full => "full",
            RestoreMode::Delta => "delta",
        }
    }
}

/// What a completed operation moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    /// Files (and symlinks) restored or archived: for a restore, what the
    /// dir holds afterwards.
    pub files: u64,
    /// Bytes of file content (of those files).
    pub bytes: u64,
    /// A restore: full or delta.
    pub mode: RestoreMode,
    /// A restore: the files (and symlinks) it wrote, and their bytes. A
    /// full restore writes every one (`files`, `bytes`); a delta only
    /// what differs.
    pub files_written: u64,
    pub bytes_written: u64,
    /// Bytes over the wire to or from the store.
    pub transferred: u64,
    /// A native snapshot: bytes of packs it added to the shared pool, and
    /// of packs its generation references that the pool already held.
    pub pool_added: u64,
    pub pool_reused: u64,
}

/// The result of a restore or snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub op: Op,
    pub result: Result<Done, Skip>,
    pub elapsed: Duration,
    pub key: String,
    /// Where the store lives, for logs (`s3://bucket/prefix`, `file:///path`).
    pub store: String,
    /// A done restore: the key whose generation was restored, `key` itself
    /// or one of the fallbacks.
    pub from_key: Option<String>,
    /// A done restore: the generation restored (a native generation's
    /// manifest, or the single archive's key).
    pub generation: Option<String>,
    /// A hot-first restore: when its first phase put the hot files (and
    /// every directory and symlink) in place, from the start. The dir was
    /// usable from then on, even if the rest then failed.
    pub hot: Option<Duration>,
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        self.result.is_ok()
    }

    /// A restore's tier: `exact` (the key itself), `fallback`, or `None`
    /// (skipped: a cold start).
    pub fn hit(&self) -> Option<&'static str> {
        match (&self.result, &self.from_key) {
            (Ok(_), Some(k)) if *k != self.key => Some("fallback"),
            (Ok(_), _) if self.op == Op::Restore => Some("exact"),
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        self.result.as_ref().err().map(|s| s.reason)
    }

    /// The one-object JSON the CLI prints with `--json` and the runner shows
    /// in its status: `ok, op, reason, ms, files, bytes, key, store`; a
    /// restore adds `mode` (`full`, `delta`; null when skipped),
    /// `files_written` and `bytes_written`.
    pub fn to_json(&self) -> serde_json::Value {
        let done = self.result.as_ref().ok().copied().unwrap_or_default();
        let mut v = serde_json::json!({
            "ok": self.is_done(),
            "op": self.op,
            "reason": self.reason().map(Reason::as_str),
            "ms": self.elapsed.as_millis() as u64,
            "files": done.files,
            "bytes": done.bytes,
            "transferred": done.transferred,
            "key": self.key,
            "store": self.store,
        });
        if let Err(skip) = &self.result {
            v["detail"] = skip.detail.clone().into();
        }
        if self.op == Op::Restore {
            v["hit"] = self.hit().into();
            v["from_key"] = self.from_key.clone().into();
            v["generation"] = self.generation.clone().into();
            v["hot_ms"] = self.hot.map(|d| d.as_millis() as u64).into();
            v["mode"] = self.result.as_ref().ok().map(|d| d.mode.as_str()).into();
            v["files_written"] = done.files_written.into();
            v["bytes_written"] = done.bytes_written.into();
        } else if done.pool_added + done.pool_reused > 0 {
            v["pool_added"] = done.pool_added.into();
            v["pool_reused"] = done.pool_reused.into();
        }
        v
    }
}

/// Bytes as megabytes, for logs.
pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}
