//! The seed's legacy build cache (`daemon/cache.ts`): a `cache.tar.zst`
//! (falling back to `cache.tar`) made by the build pipeline, fetched with
//! static admin keys and extracted into `DENO_DIR_RUN`. It goes through the
//! same engine as the main cache, so it is bounded, atomic and safely
//! extracted too.

use sandcache_engine::{Cache, CacheConfig, Outcome, Reason, RestoreOptions};
use sandcache_store::{S3Spec, StaticCredentials, StoreOptions, StoreSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The variables it reads, from the runner's env or the deploy's `envs`.
pub mod vars {
    pub const BUCKET: &str = "ASSETS_BUCKET";
    pub const REGION: &str = "ADMIN_S3_REGION";
    pub const KEY_ID: &str = "ADMIN_S3_ACCESS_KEY_ID";
    pub const SECRET: &str = "ADMIN_S3_SECRET_ACCESS_KEY";
    /// sandcache's addition, for S3-compatible stores.
    pub const ENDPOINT: &str = "ADMIN_S3_ENDPOINT";
    pub const DIR: &str = "DENO_DIR_RUN";
    /// Every one of them, for filtering an environment.
    pub const ALL: [&str; 6] = [BUCKET, REGION, KEY_ID, SECRET, ENDPOINT, DIR];
}

pub const DEFAULT_BUCKET: &str = "deco-assets-storage";
pub const DEFAULT_REGION: &str = "sa-east-1";

/// A configured legacy build cache.
#[derive(Debug, Clone)]
pub struct LegacyCache {
    spec: S3Spec,
    dir: PathBuf,
}

impl LegacyCache {
    /// `None` (skip the step) unless both keys and `DENO_DIR_RUN` are set.
    pub fn from_vars(v: &BTreeMap<String, String>) -> Option<LegacyCache> {
        let get = |k: &str| v.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let credentials =
            StaticCredentials { key_id: get(vars::KEY_ID)?, secret: get(vars::SECRET)?, session_token: None };
        let dir = PathBuf::from(get(vars::DIR)?);
        let mut spec = S3Spec::new(get(vars::BUCKET).unwrap_or_else(|| DEFAULT_BUCKET.into()));
        spec.region = get(vars::REGION).unwrap_or_else(|| DEFAULT_REGION.into());
        spec.endpoint = get(vars::ENDPOINT);
        spec.credentials = Some(credentials);
        Some(LegacyCache { spec, dir })
    }

    /// Restores `deco-sites/<site>/cache.tar.zst`, else `cache.tar`.
    pub async fn restore(&self, site: &str, store_opts: &StoreOptions, opts: &RestoreOptions) -> Outcome {
        let mut outcome = None;
        for name in ["cache.tar.zst", "cache.tar"] {
            let config = CacheConfig {
                store: Some(StoreSpec::S3(self.spec.clone())),
                key: Some(format!("deco-sites/{site}/{name}")),
            };
            let o = Cache::open(&config, store_opts).restore(&self.dir, opts).await;
            if o.reason() != Some(Reason::NotFound) {
                return o;
            }
            outcome = Some(o);
        }
        outcome.expect("two attempts")
    }
}
