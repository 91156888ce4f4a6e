//! Cache configuration, including the seed's deploy-body variables.

use std::collections::HashMap;

use sandcache_store::{S3Spec, StoreSpec};

/// The seed's variables, as the deploy body's `envs` carries them.
pub mod seed_env {
    /// Its presence enables the cache: the bucket to use.
    pub const BUCKET: &str = "DECO_CACHE_S3_BUCKET";
    /// The bucket's region (default us-west-2).
    pub const REGION: &str = "DECO_CACHE_S3_REGION";
    /// The object key, `<site>/cache.tgz` as the admin sets it.
    pub const KEY: &str = "DECO_CACHE_S3_KEY";
    /// sandcache's addition: a custom endpoint for S3-compatible stores.
    pub const ENDPOINT: &str = "DECO_CACHE_S3_ENDPOINT";
}

/// Which store and key a cache uses. `store: None` disables the cache: no
/// store is ever called.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheConfig {
    pub store: Option<StoreSpec>,
    pub key: Option<String>,
}

impl CacheConfig {
    /// Reads the seed's `DECO_CACHE_S3_*` variables from a map of envs, as
    /// the deploy body delivers them. Without a bucket the cache is
    /// disabled. Empty values count as unset.
    pub fn from_envs(envs: &HashMap<String, String>) -> CacheConfig {
        let get = |k: &str| envs.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned);
        let Some(bucket) = get(seed_env::BUCKET) else {
            return CacheConfig { store: None, key: get(seed_env::KEY) };
        };
        let mut spec = S3Spec::new(bucket);
        if let Some(region) = get(seed_env::REGION) {
            spec.region = region;
        }
        spec.endpoint = get(seed_env::ENDPOINT);
        CacheConfig { store: Some(StoreSpec::S3(spec)), key: get(seed_env::KEY) }
    }

    /// Fills what this config leaves unset from `defaults` (runner-wide
    /// flags or container env): the deploy's own values win.
    pub fn or(self, defaults: &CacheConfig) -> CacheConfig {
        CacheConfig {
            store: self.store.or_else(|| defaults.store.clone()),
            key: self.key.or_else(|| defaults.key.clone()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.store.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bucket_enables_and_region_defaults_to_us_west_2() {
        let c =
            CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_BUCKET", "b"), ("DECO_CACHE_S3_KEY", "site/cache.tgz")]));
        let Some(StoreSpec::S3(s3)) = &c.store else { panic!("{c:?}") };
        assert_eq!((s3.bucket.as_str(), s3.region.as_str()), ("b", "us-west-2"));
        assert_eq!(c.key.as_deref(), Some("site/cache.tgz"));
        let c = CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_BUCKET", "b"), ("DECO_CACHE_S3_REGION", "eu-west-1")]));
        let Some(StoreSpec::S3(s3)) = &c.store else { panic!() };
        assert_eq!(s3.region, "eu-west-1");
    }

    #[test]
    fn no_bucket_disables() {
        assert!(!CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_KEY", "k")])).is_enabled());
        assert!(!CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_BUCKET", " ")])).is_enabled());
    }

    #[test]
    fn deploy_values_override_defaults() {
        let defaults = CacheConfig { store: Some(StoreSpec::Local("/x".into())), key: Some("d".into()) };
        let c = CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_KEY", "k")])).or(&defaults);
        assert_eq!((c.store, c.key.as_deref()), (Some(StoreSpec::Local("/x".into())), Some("k")));
    }
}
