//! A store from its spec.

use std::sync::Arc;

use crate::error::StoreError;
use crate::local::LocalStore;
use crate::options::StoreOptions;
use crate::s3::S3Store;
use crate::spec::StoreSpec;
use crate::store::Store;

/// Opens the store a spec names. No request is made yet.
pub fn open(spec: &StoreSpec, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec {
        StoreSpec::Local(path) => Arc::new(LocalStore::new(path.clone())),
        StoreSpec::S3(s3) => Arc::new(S3Store::new(s3, opts)?),
    })
}
