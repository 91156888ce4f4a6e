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
    /// sandcache's addition: credentials scoped to this site (for example
    /// an STS session with a policy naming `<prefix>/<site>/*`), used
    /// instead of the runner's own. Never passed to the worker.
    pub const ACCESS_KEY_ID: &str = "DECO_CACHE_S3_ACCESS_KEY_ID";
    pub const SECRET_ACCESS_KEY: &str = "DECO_CACHE_S3_SECRET_ACCESS_KEY";
    pub const SESSION_TOKEN: &str = "DECO_CACHE_S3_SESSION_TOKEN";
    /// The scoped-credential variables: the runner's to use, never the worker's.
    pub const CREDENTIALS: [&str; 3] = [ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN];
    /// sandcache's addition: a key prefix inside the bucket, the store's
    /// root: keys, and the shared pool (`PREFIX/pool/`), live under it.
    pub const PREFIX: &str = "DECO_CACHE_S3_PREFIX";
    /// sandcache's addition: comma-separated keys, or `prefix/`es, to
    /// restore from when the key has nothing usable (read-only bases).
    pub const FALLBACK_KEYS: &str = "DECO_CACHE_S3_FALLBACK_KEYS";

    /// The fallbacks a comma-separated value names, in order, empty items
    /// dropped.
    pub fn fallbacks(value: Option<&str>) -> Vec<String> {
        value.unwrap_or("").split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect()
    }
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
        if let Some(prefix) = get(seed_env::PREFIX) {
            spec.prefix = prefix.trim_matches('/').to_owned();
        }
        if let (Some(key_id), Some(secret)) = (get(seed_env::ACCESS_KEY_ID), get(seed_env::SECRET_ACCESS_KEY)) {
            let session_token = get(seed_env::SESSION_TOKEN);
            spec.credentials = Some(sandcache_store::StaticCredentials { key_id, secret, session_token });
        }
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
    fn scoped_credentials_come_with_the_bucket() {
        let c = CacheConfig::from_envs(&envs(&[
            ("DECO_CACHE_S3_BUCKET", "b"),
            ("DECO_CACHE_S3_ACCESS_KEY_ID", "ASIA1"),
            ("DECO_CACHE_S3_SECRET_ACCESS_KEY", "s"),
            ("DECO_CACHE_S3_SESSION_TOKEN", "t"),
        ]));
        let Some(StoreSpec::S3(s3)) = &c.store else { panic!("{c:?}") };
        let creds = s3.credentials.as_ref().expect("scoped credentials");
        assert_eq!((creds.key_id.as_str(), creds.session_token.as_deref()), ("ASIA1", Some("t")));
        assert!(!format!("{c:?}").contains("\"s\""), "the secret is never printed");
        let c = CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_BUCKET", "b"), ("DECO_CACHE_S3_ACCESS_KEY_ID", "A")]));
        let Some(StoreSpec::S3(s3)) = &c.store else { panic!() };
        assert!(s3.credentials.is_none(), "a key id alone is not credentials");
    }

    #[test]
    fn a_prefix_is_the_store_root() {
        let c = CacheConfig::from_envs(&envs(&[("DECO_CACHE_S3_BUCKET", "bkt"), ("DECO_CACHE_S3_PREFIX", "/caches/")]));
        assert_eq!(c.store.unwrap().to_string(), "s3://bkt/caches");
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
