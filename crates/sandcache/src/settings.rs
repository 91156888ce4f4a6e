//! Turns flags and environment into a resolved cache configuration.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sandcache_engine::CacheConfig;
use sandcache_store::{S3Spec, StoreSpec};

use crate::env_vars;

/// Store flags shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where caches live: s3://BUCKET[/PREFIX], file://PATH, a path, `local`
    /// (the embedded default) or `off`.
    /// Default: s3://$DECO_CACHE_S3_BUCKET when set, else a local directory
    /// under the user's cache dir.
    #[arg(long, env = env_vars::SANDCACHE_STORE, value_name = "STORE")]
    pub store: Option<String>,
    /// The cache's key in the store, such as `site/cache.tgz`.
    #[arg(long, env = env_vars::DECO_CACHE_S3_KEY, value_name = "KEY")]
    pub key: Option<String>,
    /// S3 endpoint for S3-compatible servers (path-style addressing).
    /// Default: $AWS_ENDPOINT_URL, then $DECO_CACHE_S3_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// S3 region. Default: $DECO_CACHE_S3_REGION, $AWS_REGION,
    /// $AWS_DEFAULT_REGION, then us-west-2.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The embedded default store: a directory under the user's cache dir.
pub fn default_store_dir() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("sandcache").join("store")
}

impl StoreArgs {
    /// The store, `None` when disabled with `off`. Errors are usage errors.
    pub fn store_spec(&self) -> anyhow::Result<Option<StoreSpec>> {
        let mut spec = match self.store.as_deref().map(str::trim) {
            Some("off" | "none") => return Ok(None),
            Some("local") => StoreSpec::Local(default_store_dir()),
            Some(s) => s.parse::<StoreSpec>().with_context(|| "--store / SANDCACHE_STORE")?,
            None => match env(env_vars::DECO_CACHE_S3_BUCKET) {
                Some(bucket) if bucket.contains('/') => {
                    bail!("{}={bucket:?} must be a bare bucket name", env_vars::DECO_CACHE_S3_BUCKET)
                }
                Some(bucket) => StoreSpec::S3(S3Spec::new(bucket)),
                None => StoreSpec::Local(default_store_dir()),
            },
        };
        if let StoreSpec::S3(s3) = &mut spec {
            s3.region = self
                .region
                .clone()
                .or_else(|| env(env_vars::DECO_CACHE_S3_REGION))
                .or_else(|| env(env_vars::AWS_REGION))
                .or_else(|| env(env_vars::AWS_DEFAULT_REGION))
                .unwrap_or_else(|| S3Spec::DEFAULT_REGION.to_owned());
            s3.endpoint = self
                .endpoint
                .clone()
                .or_else(|| env(env_vars::AWS_ENDPOINT_URL))
                .or_else(|| env(env_vars::DECO_CACHE_S3_ENDPOINT));
            if let Some(ep) = &s3.endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    bail!("endpoint {ep:?} must start with http:// or https://");
                }
            }
        }
        Ok(Some(spec))
    }

    /// The resolved configuration; the key is required.
    pub fn config(&self) -> anyhow::Result<CacheConfig> {
        let store = self.store_spec()?;
        let Some(key) = self.key.clone().filter(|k| !k.trim().is_empty()) else {
            bail!("no cache key: pass --key KEY or set {}", env_vars::DECO_CACHE_S3_KEY);
        };
        sandcache_engine::validate_key(&key).map_err(anyhow::Error::msg)?;
        Ok(CacheConfig { store, key: Some(key) })
    }
}
