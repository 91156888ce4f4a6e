//! Object stores for sandcache.
//!
//! [`Store`] is the small interface the engine needs: streamed reads (whole or
//! ranged), streamed atomic writes, head, list and delete. Two backends
//! implement it: [`S3Store`] (any S3-compatible server, through `object_store`)
//! and [`LocalStore`] (a directory, the embedded default).
//!
//! A write is atomic for readers: until it completes, a reader sees the old
//! object or none, never a partial one (S3 multipart completion, or a rename
//! on the local filesystem).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandcache_store::StoreError> {
//! use sandcache_store::{open, StoreSpec, StoreOptions};
//! let spec: StoreSpec = "s3://my-bucket/caches".parse()?;
//! let store = open(&spec, &StoreOptions::default())?;
//! let object = store.get("site/cache.tgz").await?;
//! println!("{} bytes", object.size);
//! # Ok(()) }
//! ```
//!
//! | file | holds |
//! |---|---|
//! | `store.rs` | the [`Store`] trait, and the objects it hands back ([`GetObject`], [`ObjectInfo`]) |
//! | `local.rs` | [`LocalStore`]: one file per object, written by rename |
//! | `s3.rs` | [`S3Store`], through `object_store`; `profile.rs`: the shared credentials file |
//! | `spec.rs`, `open.rs` | [`StoreSpec`] (`s3://bucket/prefix`, a path), checked before any client sees it; [`open`] |
//! | `options.rs` | [`StoreOptions`]: timeouts, retries, part sizes |
//! | `key.rs`, `error.rs` | what a key may be ([`check_key`]); [`StoreError`] |
//! | `recycle.rs` | [`Recycler`]: buffers handed out as `Bytes` and taken back |

mod error;
mod key;
mod local;
mod open;
mod options;
mod profile;
mod recycle;
mod s3;
mod spec;
mod store;

pub use error::StoreError;
pub use key::check_key;
pub use local::LocalStore;
pub use open::open;
pub use options::StoreOptions;
pub use recycle::Recycler;
pub use s3::S3Store;
pub use spec::{S3Spec, StaticCredentials, StoreSpec};
pub use store::{BodyStream, ByteStream, GetObject, ObjectInfo, Store};
