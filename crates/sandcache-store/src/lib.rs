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
