//! Turns flags and environment into a resolved cache configuration.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::ValueEnum;
use sandcache_engine::{CacheConfig, Format, Limits};
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

/// The flag's value, else the first set variable, with its name.
fn first_of(flag: &Option<String>, flag_name: &str, vars: &[&str]) -> Option<(String, String)> {
    if let Some(v) = flag.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        return Some((v.to_owned(), flag_name.to_owned()));
    }
    vars.iter().find_map(|name| env(name).map(|v| (v, (*name).to_owned())))
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
            // Each value with where it came from, so an error names the flag
            // or variable to fix.
            let region = first_of(
                &self.region,
                "--region",
                &[env_vars::DECO_CACHE_S3_REGION, env_vars::AWS_REGION, env_vars::AWS_DEFAULT_REGION],
            );
            let endpoint =
                first_of(&self.endpoint, "--endpoint", &[env_vars::AWS_ENDPOINT_URL, env_vars::DECO_CACHE_S3_ENDPOINT]);
            let check = |s3: &S3Spec, from: &str| s3.validate().map_err(anyhow::Error::msg).context(from.to_owned());
            // The bucket first (with the default region), then each value
            // in turn, so the error blames the one that is wrong.
            s3.region = S3Spec::DEFAULT_REGION.to_owned();
            check(s3, if self.store.is_some() { "--store / SANDCACHE_STORE" } else { env_vars::DECO_CACHE_S3_BUCKET })?;
            if let Some((value, from)) = region {
                s3.region = value;
                check(s3, &from)?;
            }
            if let Some((value, from)) = endpoint {
                s3.endpoint = Some(value);
                check(s3, &from)?;
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

/// Bounds on what a restore may expand to, and on what a snapshot may
/// read. A restore past one is skipped as `too_large` (`unsafe` for a path)
/// and the dir keeps its content; a snapshot past one is skipped as
/// `too_large` before the content is read, and the stored cache stays.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LimitArgs {
    /// Most bytes of file content a restore may write, or a snapshot read
    /// (as listed): plain bytes, or with a K, M, G or T suffix (powers of
    /// 1024), such as 512M.
    #[arg(long, env = env_vars::SANDCACHE_MAX_BYTES, value_name = "SIZE")]
    #[arg(default_value_t = Size(Limits::default().max_bytes))]
    max_bytes: Size,
    /// Most entries (files, directories and links) a restore may create, or
    /// a snapshot list.
    #[arg(long, env = env_vars::SANDCACHE_MAX_FILES, value_name = "N")]
    #[arg(default_value_t = Limits::default().max_entries, value_parser = clap::value_parser!(u64).range(1..))]
    max_files: u64,
    /// Most bytes in one entry's path.
    #[arg(long, env = env_vars::SANDCACHE_MAX_PATH_LEN, value_name = "BYTES")]
    #[arg(default_value_t = Limits::default().max_path_len as u64)]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_path_len: u64,
}

impl LimitArgs {
    pub(crate) fn limits(&self) -> Limits {
        Limits { max_bytes: self.max_bytes.0, max_entries: self.max_files, max_path_len: self.max_path_len as usize }
    }
}

/// `--format`: the snapshot's archive format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Native,
    Tgz,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Native => Format::Native,
            FormatArg::Tgz => Format::Tgz,
        }
    }
}

/// A fallback (`--fallback`, `--fallback-key`): a key, or a prefix ending
/// in `/`.
pub(crate) fn parse_fallback(f: &str) -> Result<String, String> {
    let f = f.trim();
    sandcache_engine::validate_fallback(f).map(|()| f.to_owned())
}

/// A byte count written as `4096`, `512M` or `32G` (K, M, G, T: powers of
/// 1024; an `iB` or `B` after the letter is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

const SIZE_UNITS: [(char, u32); 4] = [('T', 40), ('G', 30), ('M', 20), ('K', 10)];

impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let bad = || format!("expected a number of bytes such as 4096, 512M or 32G, not {s:?}");
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let t = t.strip_suffix(['i', 'I']).filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic())).unwrap_or(t);
        let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some(c) if c.is_ascii_alphabetic() => {
                let (_, shift) = SIZE_UNITS.iter().find(|(u, _)| *u == c).ok_or_else(bad)?;
                (&t[..t.len() - 1], *shift)
            }
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is more bytes than fit in 64 bits"))?;
        if bytes == 0 {
            return Err("the size must be at least 1 byte".into());
        }
        Ok(Size(bytes))
    }
}

impl std::fmt::Display for Size {
    /// The largest unit that divides the size exactly: `32G`, `1536M`, `100`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match SIZE_UNITS.iter().find(|(_, shift)| self.0 != 0 && self.0 % (1 << shift) == 0) {
            Some((unit, shift)) => write!(f, "{}{unit}", self.0 >> shift),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    #[test]
    fn sizes_parse_plain_and_with_suffixes() {
        let ok = |s: &str| s.parse::<Size>().unwrap().0;
        assert_eq!(ok("4096"), 4096);
        assert_eq!(ok("512M"), 512 << 20);
        assert_eq!(ok("512m"), 512 << 20);
        assert_eq!(ok("32G"), 32 << 30);
        assert_eq!(ok("32GiB"), 32 << 30);
        assert_eq!(ok("1TB"), 1 << 40);
        assert_eq!(ok(" 10K "), 10 << 10);
        assert_eq!(ok("100B"), 100);
        for bad in ["", "lots", "G", "1.5G", "-1", "12X", "1GG", "0", "99999999999T"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} is refused");
        }
        assert!("lots".parse::<Size>().unwrap_err().contains("\"lots\""));
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(Size(32 << 30).to_string(), "32G");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(100).to_string(), "100");
        for s in ["32G", "1536M", "100", "7K"] {
            assert_eq!(s.parse::<Size>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn limit_flags_default_to_the_library_defaults() {
        let cli = Cli::try_parse_from(["sandcache", "restore", "--key", "k"]).unwrap();
        let Command::Restore { limits, .. } = cli.command else { panic!("a restore") };
        // The environment may set them; only check when it does not.
        if [env_vars::SANDCACHE_MAX_BYTES, env_vars::SANDCACHE_MAX_FILES, env_vars::SANDCACHE_MAX_PATH_LEN]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert_eq!(limits.limits(), Limits::default());
        }
        let cli = Cli::try_parse_from([
            "sandcache",
            "restore",
            "--key",
            "k",
            "--max-bytes",
            "512M",
            "--max-files",
            "3",
            "--max-path-len",
            "100",
        ])
        .unwrap();
        let Command::Restore { limits, .. } = cli.command else { panic!("a restore") };
        assert_eq!(limits.limits(), Limits { max_bytes: 512 << 20, max_entries: 3, max_path_len: 100 });
        let cli = Cli::try_parse_from(["sandcache", "snapshot", "--key", "k", "--max-bytes", "1G", "--max-files", "7"])
            .unwrap();
        let Command::Snapshot { limits, .. } = cli.command else { panic!("a snapshot") };
        assert_eq!((limits.limits().max_bytes, limits.limits().max_entries), (1 << 30, 7));
    }
}
