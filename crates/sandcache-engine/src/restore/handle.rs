//! The public restore calls: [`Cache::restore`] and
//! [`Cache::restore_handle`] (and its [`RestoreHandle`]), which run the
//! chain of candidates within the deadline and log the outcome.

use std::path::Path;
use std::time::Duration;

use crate::cache::Cache;
use crate::options::RestoreOptions;
use crate::outcome::{Op, Outcome, Reason, Skip, mb};

use super::chain::{HotSignal, restore};

impl Cache {
    /// Restores the cache into `dir`. Never fails: a miss or any failure is a
    /// skipped outcome, and `dir` keeps its previous content.
    pub async fn restore(&self, dir: &Path, opts: &RestoreOptions) -> Outcome {
        self.restore_signalling(dir, opts, &HotSignal::new(None)).await
    }

    /// A restore running in the background (on the current tokio runtime),
    /// with a handle that resolves twice: at `hot-ready`, when the hot set
    /// is in place and the dir is usable ([`RestoreHandle::hot_ready`]),
    /// and at completion ([`RestoreHandle::finish`]). Without
    /// [`RestoreOptions::hot_first`], or for a generation without a hot set,
    /// both come at the swap.
    pub fn restore_handle(&self, dir: &Path, opts: &RestoreOptions) -> RestoreHandle {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (cache, dir, opts) = (self.clone(), dir.to_owned(), opts.clone());
        let task = tokio::spawn(async move { cache.restore_signalling(&dir, &opts, &HotSignal::new(Some(tx))).await });
        RestoreHandle { hot: Some(rx), task }
    }

    async fn restore_signalling(&self, dir: &Path, opts: &RestoreOptions, hot: &HotSignal) -> Outcome {
        let from = std::sync::OnceLock::new();
        let mut outcome = self
            .bounded(Op::Restore, opts.timeout, |store, key, deadline| {
                restore(store, key, dir, opts, deadline, &from, hot)
            })
            .await;
        if outcome.is_done() {
            (outcome.from_key, outcome.generation) = from.into_inner().unzip();
        }
        outcome.hot = hot.at().filter(|_| opts.hot_first);
        log(&outcome, &self.location());
        outcome
    }
}

/// A restore in the background: see [`Cache::restore_handle`]. Dropping
/// it cancels the restore, as dropping [`Cache::restore`]'s future does:
/// its writers stop, its staging or temporary files go, its lock is freed.
#[derive(Debug)]
pub struct RestoreHandle {
    hot: Option<tokio::sync::oneshot::Receiver<Duration>>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl RestoreHandle {
    /// Waits for `hot-ready`: `Some(elapsed)` once the dir holds the hot set
    /// (the app may start), `None` when the restore ended without getting
    /// there (a miss or a failure: [`RestoreHandle::finish`] says which).
    /// Resolves once; later calls return `None` at once.
    pub async fn hot_ready(&mut self) -> Option<Duration> {
        self.hot.take()?.await.ok()
    }

    /// Waits for the whole restore. An outcome, never an error: a restore
    /// task that panicked is `internal`.
    pub async fn finish(mut self) -> Outcome {
        match (&mut self.task).await {
            Ok(o) => o,
            Err(e) => Outcome {
                op: Op::Restore,
                result: Err(Skip::joined("the restore task", e)),
                elapsed: Duration::ZERO,
                key: String::new(),
                store: String::new(),
                from_key: None,
                generation: None,
                hot: None,
            },
        }
    }
}

impl Drop for RestoreHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn log(o: &Outcome, location: &str) {
    let ms = o.elapsed.as_millis() as u64;
    let (op, key, reason) = ("restore", o.key.as_str(), o.reason().map_or("done", |r| r.as_str()));
    let (hit, from_key) = (o.hit().unwrap_or("cold"), o.from_key.as_deref().unwrap_or(""));
    let hot_ms = o.hot.map(|d| d.as_millis() as u64);
    let hot = hot_ms.map_or(String::new(), |h| format!(", hot set in {h}ms"));
    let tier = match o.hit() {
        Some("fallback") => format!(" (fallback: {from_key})"),
        _ => String::new(),
    };
    match &o.result {
        Ok(d) => tracing::info!(
            target: "sandbox-cache",
            op, key, reason, ms, hot_ms, hit, from_key, mode = d.mode.as_str(), files = d.files, bytes = d.bytes,
            files_written = d.files_written, bytes_written = d.bytes_written, transferred = d.transferred,
            "restored cache from {location}{tier} in {ms}ms ({}: {} files, {} MB, of which {} files, {} MB written; {} MB transferred{hot})",
            d.mode.as_str(),
            d.files,
            mb(d.bytes),
            d.files_written,
            mb(d.bytes_written),
            mb(d.transferred)
        ),
        Err(s) if s.reason == Reason::NotFound => {
            tracing::info!(target: "sandbox-cache", op, key, reason, ms, "no cache yet for {location} (cold start)")
        }
        Err(s) if s.reason == Reason::Disabled => {
            tracing::debug!(target: "sandbox-cache", "cache disabled")
        }
        Err(s) if o.hot.is_some() => tracing::warn!(
            target: "sandbox-cache",
            op, key, reason, ms, hot_ms,
            "restore incomplete ({}) after {ms}ms{hot}; files not restored are cold misses: {}",
            s.reason,
            s.detail
        ),
        Err(s) => tracing::warn!(
            target: "sandbox-cache",
            op, key, reason, ms,
            "restore failed ({}) after {ms}ms, continuing cold: {}",
            s.reason,
            s.detail
        ),
    }
}
