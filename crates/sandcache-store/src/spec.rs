use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::StoreError;
use crate::key::check_key;

/// Where caches live: `s3://BUCKET[/PREFIX]`, `file://PATH` or a plain path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Local(PathBuf),
    S3(S3Spec),
}

/// An S3 bucket and how to reach it. Credentials come from the standard AWS
/// chain (environment, web identity, container/Pod Identity, profile, IMDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    pub region: String,
    /// A custom endpoint for S3-compatible servers (path-style addressing).
    pub endpoint: Option<String>,
    /// Static keys instead of the AWS default chain (the legacy build cache's
    /// `ADMIN_S3_*` keys). Never printed.
    pub credentials: Option<StaticCredentials>,
}

/// An access key pair, and the session token of temporary credentials.
/// `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub key_id: String,
    pub secret: String,
    pub session_token: Option<String>,
}

impl StaticCredentials {
    /// The key id and session token travel in request headers, so they
    /// must be printable ASCII without spaces (the S3 client assumes so and
    /// panics signing a request otherwise). The error names the field,
    /// never the value.
    pub fn validate(&self) -> Result<(), String> {
        check_credential("access key id", &self.key_id)?;
        check_credential("secret access key", &self.secret)?;
        match &self.session_token {
            Some(t) => check_credential("session token", t),
            None => Ok(()),
        }
    }
}

/// A credential value is non-empty printable ASCII without spaces.
pub fn check_credential(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the {what} is not printable ASCII without spaces (value not shown)"));
    }
    Ok(())
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials").field("key_id", &self.key_id).field("secret", &"<redacted>").finish()
    }
}

impl S3Spec {
    pub const DEFAULT_REGION: &'static str = "us-west-2";

    /// Checks every field before any request: a bucket name by the S3
    /// naming rules, a region, an endpoint (an http or https URL with a
    /// host), the prefix. The S3 client assumes them valid (and panics
    /// signing a request with a bad bucket). The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            && b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric())
            && !b.contains("..");
        if !bucket_ok {
            return Err(format!(
                "bucket `{b}` is not a valid S3 bucket name (3-63 lowercase letters, digits, `.` and `-`, \
                 starting and ending with a letter or digit)"
            ));
        }
        // Forms S3 reserves: an IDNA label (`xn--`, which the client's URL
        // parser rejects when it is not valid punycode, and then panics
        // signing), access-point and S3 Express aliases (the last switches
        // the client to a zonal endpoint), and an IP address.
        const RESERVED_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
        const RESERVED_SUFFIXES: [&str; 5] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
        if let Some(p) = RESERVED_PREFIXES.iter().find(|p| b.starts_with(*p)) {
            return Err(format!("bucket `{b}` starts with `{p}`, which S3 reserves"));
        }
        if let Some(s) = RESERVED_SUFFIXES.iter().find(|s| b.ends_with(*s)) {
            return Err(format!("bucket `{b}` ends with `{s}`, which S3 reserves"));
        }
        if b.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(format!("bucket `{b}` is an IP address, which S3 refuses as a bucket name"));
        }
        let r = &self.region;
        let edges_ok =
            r.starts_with(|c: char| c.is_ascii_alphanumeric()) && r.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !edges_ok || r.len() > 64 || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
            return Err(format!("region `{r}` is not a region name (letters, digits and `-`, like us-west-2)"));
        }
        // With no endpoint the region is part of the host the client signs
        // for (`s3.REGION.amazonaws.com`); a label the URL parser rejects
        // (`xn--` that is not punycode) would panic there, so it is parsed
        // here first, by the same parser.
        if url::Url::parse(&format!("https://s3.{r}.amazonaws.com/")).is_err() {
            return Err(format!("region `{r}` does not make a valid host name (s3.{r}.amazonaws.com)"));
        }
        if let Some(e) = &self.endpoint {
            // `user:password@` in an endpoint is a secret in a URL: refused,
            // and an endpoint that may hold one is never echoed.
            if e.contains('@') {
                return Err("the endpoint holds `@` (credentials in the URL are refused; value not shown)".into());
            }
            let ok = url::Url::parse(e)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()));
            if ok.is_none() || e.chars().any(char::is_whitespace) {
                return Err(format!("endpoint `{e}` is not an http:// or https:// URL with a host"));
            }
        }
        if !self.prefix.is_empty() && check_key(&self.prefix).is_err() {
            return Err(format!("prefix `{}` has empty, `.` or `..` segments", self.prefix));
        }
        if let Some(c) = &self.credentials {
            c.validate()?;
        }
        Ok(())
    }

    pub fn new(bucket: impl Into<String>) -> Self {
        S3Spec {
            bucket: bucket.into(),
            prefix: String::new(),
            region: Self::DEFAULT_REGION.into(),
            endpoint: None,
            credentials: None,
        }
    }
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let invalid = |why: &str| StoreError::InvalidSpec { spec: s.to_owned(), why: why.to_owned() };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("missing bucket name (expected s3://BUCKET[/PREFIX])"));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                check_key(prefix).map_err(|_| invalid("prefix has empty, `.` or `..` segments"))?;
            }
            let mut spec = S3Spec::new(bucket);
            spec.prefix = prefix.to_owned();
            spec.validate().map_err(|why| invalid(&why))?;
            return Ok(StoreSpec::S3(spec));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err(invalid("missing path (expected file:///ABSOLUTE/PATH)"));
            }
            return Ok(StoreSpec::Local(path.into()));
        }
        if s.is_empty() {
            return Err(invalid("empty store"));
        }
        if s.contains("://") {
            return Err(invalid("unknown scheme (expected s3://, file:// or a path)"));
        }
        Ok(StoreSpec::Local(s.into()))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Local(p) => write!(f, "file://{}", p.display()),
            StoreSpec::S3(s) if s.prefix.is_empty() => write!(f, "s3://{}", s.bucket),
            StoreSpec::S3(s) => write!(f, "s3://{}/{}", s.bucket, s.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_fields_are_checked_before_any_request() {
        for bad in ["s3://no_such bucket!", "s3://ab", "s3://UPPER", "s3://-dash", "s3://a..b", "s3://x.y/../p"] {
            let err = bad.parse::<StoreSpec>().unwrap_err().to_string();
            assert!(err.contains("not a valid S3 bucket name") || err.contains("prefix"), "{bad}: {err}");
        }
        let mut s = S3Spec::new("sandcache");
        assert!(s.validate().is_ok());
        s.region = "us west".into();
        assert!(s.validate().unwrap_err().contains("region"));
        // `xn--bucket` is not punycode: the client's URL parser rejects
        // the host `s3.xn--bucket.amazonaws.com` and object_store panics
        // signing a request for it. Found by the deploy-envs proptest.
        for r in ["xn--bucket", "us.xn--bucket", "a..b", "-"] {
            s.region = r.into();
            assert!(s.validate().is_err_and(|e| e.contains("region")), "{r}: {:?}", s.validate());
        }
        for r in ["us-west-2", "garage", "eu_central", "xn--bcher-kva"] {
            s.region = r.into();
            assert!(s.validate().is_ok(), "{r}");
        }
        s.region = "us-west-2".into();
        for b in ["xn--bucket", "sthree-x", "amzn-s3-demo-x", "a-s3alias", "a--ol-s3", "a.mrap", "b--usw2-az1--x-s3"] {
            s.bucket = b.into();
            assert!(s.validate().unwrap_err().contains("reserves"), "{b}");
        }
        s.bucket = "192.168.0.1".into();
        assert!(s.validate().unwrap_err().contains("IP address"));
        s.bucket = "sandcache".into();
        s.region = "us-west-2".into();
        for e in ["http://exa mple", "ftp://h", "http://", "not a url"] {
            s.endpoint = Some(e.into());
            assert!(s.validate().unwrap_err().contains("endpoint"), "{e}");
        }
        s.endpoint = Some("https://AKIDEXAMPLE:s3cr3t@host:9000 x".into());
        let err = s.validate().unwrap_err();
        assert!(err.contains("endpoint") && !err.contains("s3cr3t"), "{err}");
        s.endpoint = Some("http://127.0.0.1:3900".into());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn parses_specs() {
        let s3: StoreSpec = "s3://bkt/some/prefix/".parse().unwrap();
        let StoreSpec::S3(spec) = &s3 else { panic!() };
        assert_eq!(
            (spec.bucket.as_str(), spec.prefix.as_str(), spec.region.as_str()),
            ("bkt", "some/prefix", "us-west-2")
        );
        assert_eq!(s3.to_string(), "s3://bkt/some/prefix");
        let creds = StaticCredentials { key_id: "AKID".into(), secret: "s3cr3t".into(), session_token: None };
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert_eq!("file:///tmp/x".parse::<StoreSpec>().unwrap(), StoreSpec::Local("/tmp/x".into()));
        assert_eq!("./rel".parse::<StoreSpec>().unwrap(), StoreSpec::Local("./rel".into()));
        for bad in ["s3://", "s3:///x", "gs://b", "", "file://", "s3://b/../x"] {
            assert!(bad.parse::<StoreSpec>().is_err(), "{bad:?}");
        }
    }
}
