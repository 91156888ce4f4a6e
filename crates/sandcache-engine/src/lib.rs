//! sandcache's engine: restore a directory from a store, snapshot it back.
//!
//! The cache is advisory, and the types say so: [`Cache::restore`] and
//! [`Cache::snapshot`] never fail their caller. They return an [`Outcome`],
//! either done (files, bytes, time) or skipped with a [`Reason`]: disabled,
//! not found, timed out, store error, corrupt, unsafe, empty, unchanged...
//! A skipped restore means a cold start: slower, never broken.
//!
//! Guarantees:
//! * a restore is bounded by its total deadline, stalls included;
//! * the directory holds its previous content or the complete new content,
//!   never a mix: extraction goes to a staging dir swapped into place; a
//!   delta restore (the dir holds a generation it restored, unchanged)
//!   puts each package dir and file in place whole instead, and one that
//!   does not complete leaves every unit whole, marked so that no snapshot
//!   stores the dir and the next restore is full;
//! * nothing is written outside the directory, whatever the archive says;
//! * a snapshot of a missing or empty directory uploads nothing, and a
//!   failed one leaves the stored cache as it was.
//!
//! ```no_run
//! # async fn demo() {
//! use std::collections::HashMap;
//! use sandcache_engine::{Cache, CacheConfig, RestoreOptions};
//! let envs: HashMap<String, String> = HashMap::new(); // the deploy body's envs
//! let cache = Cache::open(&CacheConfig::from_envs(&envs), &Default::default());
//! let outcome = cache.restore("/deno-dir".as_ref(), &RestoreOptions::default()).await;
//! println!("{}", outcome.to_json());
//! # }
//! ```
//!
//! Where things live (data flows down: the public calls at the top, the
//! shared rooms at the bottom; `restore/` and `snapshot.rs` never import
//! each other, and `native/` imports neither):
//!
//! | file | holds |
//! |---|---|
//! | `cache.rs` | [`Cache`]: a store and a key, or the reason there is none; `Cache::bounded`, the one place an [`Error`] becomes a [`Reason`] |
//! | `restore/` | the restore: public calls, the chain of candidates, a native generation, a single archive (see its `mod.rs`) |
//! | `snapshot.rs` | the snapshot: native (build, pieces, pool uploads, manifest) and tgz |
//! | `gc.rs`, `delete.rs` | retention per key and store-wide, with the bad-object checks; a key's removal |
//! | `native/` | the native format's restore and build steps (see its `mod.rs`) |
//! | `lockkey.rs`, `lockkey/canon.rs` | lockfile keys ([`lock_key`]) and canonical JSON |
//! | `bad.rs` | pool objects found bad: recorded locally and as marks |
//! | `target.rs` | the dir: staging, lock, the atomic swap, bookkeeping paths |
//! | `bookkeeping.rs` | the state (which generation the dir matches) and the index (hashes kept while files are unchanged) |
//! | `layout.rs` | every object name in a store, and key checks |
//! | `options.rs`, `config.rs` | the public calls' options; configuration from the seed's variables |
//! | `outcome.rs`, `error.rs` | what an operation ended as; the one `Error` |
//! | `background.rs`, `pipe.rs` | work that outlives an operation; channels between async and blocking sides |

mod background;
mod bad;
mod bookkeeping;
mod cache;
mod config;
mod delete;
mod error;
mod gc;
mod layout;
mod lockkey;
mod native;
mod options;
mod outcome;
mod pipe;
mod restore;
mod snapshot;
mod target;

pub use background::{RemovalsPaused, pause_removals, wait_for_background};
pub use cache::{Cache, Stores};
pub use config::{CacheConfig, seed_env};
pub use delete::DeleteReport;
pub use error::{Declined, Error, error_chain};
pub use gc::{DEFAULT_VERIFY_BYTES, DEFAULT_VERIFY_RATE, GcOptions, GcReport, gc_store};
pub use layout::{validate_fallback, validate_key};
pub use lockkey::{LOCK_KEY_FILES, LockKey, LockKeyError, lock_key};
pub use options::{Format, RestoreOptions, SnapshotOptions};
pub use outcome::{Done, Op, Outcome, Reason, RestoreMode, Skip};
pub use restore::{RestoreHandle, idle_checked};
pub use sandcache_archive::{Limits, Progress};
pub use target::{clear_dir, remove_leftovers};
