//! Archive formats for sandcache, and what a snapshot reads of a tree.
//!
//! * [`extract`] reads a tar stream (plain, gzip or zstd, told apart by their
//!   magic bytes) and writes it into a fresh staging directory, refusing
//!   anything that would create or change a file outside it.
//! * [`write_archive`] walks a directory and writes it as a tar stream, either
//!   relative to the directory or rooted at its absolute path (the layout of
//!   `tar -czf - -C / deno-dir`, which the seed runner reads).
//! * [`pack`] is the native format: packs of zstd frames and a manifest,
//!   with the manifest's checks, the pack builder and the frame decoder.
//! * [`walk`] reads a directory that someone else may change meanwhile:
//!   through directory fds, never following a symlink, never opening a
//!   FIFO or device, never reading past a file's listed size. Everything
//!   that reads a tree to snapshot it goes through it.
//! * [`sqlite`] copies Deno's own SQLite caches consistently, through the
//!   walker and a private scratch dir, for the writers to store.
//! * [`select`] is what a snapshot takes from a tree (SQLite databases and
//!   special files left out, Deno's caches copied): the one policy of the
//!   tar writer, the fingerprint and the native build.
//! * [`fingerprint`](mod@fingerprint) tells whether a tree changed from one
//!   `lstat` per entry, and gives the same value from a manifest.
//!
//! The extractor and the writer are blocking and streaming: they never hold
//! a whole archive in memory. The engine runs them on a blocking thread, fed
//! by or feeding the store.
//!
//! ```no_run
//! use sandcache_archive::{extract, ExtractOptions};
//! let archive = std::fs::File::open("cache.tgz")?;
//! let staging = std::path::Path::new("/.deno-dir.staging");
//! std::fs::create_dir(staging)?;
//! let stats = extract(archive, staging, &ExtractOptions::new("/deno-dir"))?;
//! println!("{} files, {} bytes", stats.files, stats.bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod extract;
pub mod fingerprint;
mod format;
mod limits;
mod names;
pub mod pack;
mod progress;
mod rules;
pub mod select;
pub mod sqlite;
pub mod walk;
mod write;

pub use error::ExtractError;
pub use extract::{ExtractOptions, ExtractStats, extract};
pub use fingerprint::{fingerprint, is_empty_tree};
pub use format::Compression;
pub use limits::Limits;
pub use names::{RESERVED_PREFIX, TAIL_PREFIX};
pub use progress::Progress;
pub use sqlite::SqliteOptions;
pub use walk::{WalkError, WalkOptions};
pub use write::{Encoding, Layout, WriteError, WriteOptions, WriteStats, write_archive};
