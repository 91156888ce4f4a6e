//! S3 and S3-compatible servers, through `object_store`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::error::StoreError;
use crate::key::check_key;
use crate::options::StoreOptions;
use crate::profile::ProfileCredentials;
use crate::spec::{S3Spec, StoreSpec};
use crate::store::{BodyStream, GetObject, ObjectInfo, Store};

/// An S3 bucket (and optional key prefix).
///
/// Credentials come from the standard AWS chain, in this order: static keys
/// in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; web identity (IRSA:
/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`); container credentials
/// (ECS, and EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI` +
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); the shared credentials file
/// profile (`AWS_PROFILE`); then the instance metadata service.
///
/// With a custom endpoint, requests use path-style addressing. No request
/// checksums beyond SigV4's payload hash are sent, and deletes are single
/// `DELETE`s, so S3-compatible servers need no optional features.
#[derive(Debug)]
pub struct S3Store {
    inner: Arc<AmazonS3>,
    spec: S3Spec,
    part_size: usize,
    upload_concurrency: usize,
}

impl S3Store {
    pub fn new(spec: &S3Spec, opts: &StoreOptions) -> Result<Self, StoreError> {
        let invalid = |why: String| StoreError::InvalidSpec { spec: format!("s3://{}", spec.bucket), why };
        spec.validate().map_err(invalid)?;
        // Static keys replace the whole environment-driven chain, so a session
        // token or role from the environment cannot mix with them.
        let base = match &spec.credentials {
            Some(c) => {
                let b = AmazonS3Builder::new().with_access_key_id(&c.key_id).with_secret_access_key(&c.secret);
                match &c.session_token {
                    Some(t) => b.with_token(t),
                    None => b,
                }
            }
            None => AmazonS3Builder::from_env(),
        };
        // Keys from the environment reach the same headers: check them too.
        for (config, name) in [
            (AmazonS3ConfigKey::AccessKeyId, "AWS_ACCESS_KEY_ID"),
            (AmazonS3ConfigKey::SecretAccessKey, "AWS_SECRET_ACCESS_KEY"),
            (AmazonS3ConfigKey::Token, "AWS_SESSION_TOKEN"),
        ] {
            if let Some(value) = base.get_config_value(&config) {
                crate::spec::check_credential(name, &value).map_err(invalid)?;
            }
        }
        let mut builder = base
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.region)
            .with_virtual_hosted_style_request(false)
            .with_disable_bulk_delete(true)
            // `put_new` is a PUT with `If-None-Match: *`, whatever the
            // environment says (`AWS_CONDITIONAL_PUT=disabled` would make
            // it fail): the sandbox policy requires the header for every
            // pool write.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(opts.connect_timeout)
                    .with_read_timeout(opts.idle_timeout)
                    .with_timeout(opts.request_timeout)
                    .with_allow_http(true),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: opts.max_retries,
                retry_timeout: opts.retry_timeout,
            });
        if let Some(endpoint) = &spec.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if uses_profile(&builder) {
            if let Some(creds) = ProfileCredentials::from_env().map_err(|e| invalid(e.to_string()))? {
                builder = builder.with_credentials(Arc::new(creds));
            }
        }
        let inner = builder.build().map_err(|e| invalid(e.to_string()))?;
        Ok(S3Store {
            inner: Arc::new(inner),
            spec: spec.clone(),
            part_size: opts.part_size.max(5 << 20),
            upload_concurrency: opts.upload_concurrency.max(1),
        })
    }

    fn location(&self, key: &str) -> Result<ObjectPath, StoreError> {
        check_key(key)?;
        let full = if self.spec.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.spec.prefix) };
        ObjectPath::parse(&full).map_err(|_| StoreError::InvalidKey { key: key.to_owned() })
    }

    fn key_of(&self, location: &ObjectPath) -> String {
        let s = location.as_ref();
        if self.spec.prefix.is_empty() {
            s.to_owned()
        } else {
            s.strip_prefix(&self.spec.prefix).map(|k| k.trim_start_matches('/')).unwrap_or(s).to_owned()
        }
    }

    async fn get_with(&self, key: &str, range: Option<Range<u64>>) -> Result<GetObject, StoreError> {
        let location = self.location(key)?;
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = self.inner.get_opts(&location, opts).await.map_err(|e| map_err(key, e))?;
        let size = result.meta.size;
        let key = key.to_owned();
        let stream = result.into_stream().map_err(move |e| map_err(&key, e)).boxed();
        Ok(GetObject { size, stream })
    }

    /// Uploads `first` (and the rest of `body`) as a multipart upload with at
    /// most `upload_concurrency` parts in flight; memory stays within about
    /// `(concurrency + 1) × part_size`.
    async fn put_multipart(
        &self,
        key: &str,
        location: &ObjectPath,
        first: Bytes,
        mut body: BodyStream,
    ) -> Result<u64, StoreError> {
        let upload = self.inner.put_multipart(location).await.map_err(|e| map_err(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut total = first.len() as u64;
        writer.put(first);
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(source)) => {
                    let _ = writer.abort().await;
                    return Err(StoreError::Body { key: key.to_owned(), source });
                }
            };
            if let Err(e) = writer.wait_for_capacity(self.upload_concurrency).await {
                let _ = writer.abort().await;
                return Err(map_err(key, e));
            }
            total += chunk.len() as u64;
            writer.put(chunk);
        }
        writer.finish().await.map_err(|e| map_err(key, e))?;
        Ok(total)
    }
}

impl S3Store {
    /// The first `max` objects under `prefix`, sorted: pages are requested
    /// only as long as more are wanted.
    async fn list_up_to(&self, prefix: &str, max: usize) -> Result<Vec<ObjectInfo>, StoreError> {
        // object_store lists whole path segments; filter the partial last one.
        let full = match (self.spec.prefix.is_empty(), prefix.is_empty()) {
            (true, _) => prefix.to_owned(),
            (false, true) => self.spec.prefix.clone(),
            (false, false) => format!("{}/{prefix}", self.spec.prefix),
        };
        let dir = full.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let list_prefix = if dir.is_empty() { None } else { Some(ObjectPath::from(dir)) };
        let mut out: Vec<ObjectInfo> = self
            .inner
            .list(list_prefix.as_ref())
            .map_err(|e| map_err(prefix, e))
            .try_filter_map(|meta| {
                let info = meta.location.as_ref().starts_with(&full).then(|| ObjectInfo {
                    key: self.key_of(&meta.location),
                    size: meta.size,
                    last_modified: meta.last_modified.into(),
                });
                futures::future::ready(Ok(info))
            })
            .take(max)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// True when nothing earlier in the chain than the profile is configured, so
/// the shared credentials file should be consulted.
fn uses_profile(b: &AmazonS3Builder) -> bool {
    let set = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    !(set(AmazonS3ConfigKey::AccessKeyId)
        || set(AmazonS3ConfigKey::WebIdentityTokenFile)
        || set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || set(AmazonS3ConfigKey::ContainerCredentialsFullUri))
}

fn map_err(key: &str, e: object_store::Error) -> StoreError {
    match e {
        // A 404 for a missing bucket is misconfiguration, not a first wake-up.
        object_store::Error::NotFound { .. } if chain(&e).contains("NoSuchBucket") => {
            StoreError::Request { key: key.to_owned(), source: Box::new(e) }
        }
        object_store::Error::NotFound { .. } => StoreError::NotFound { key: key.to_owned() },
        // object_store reports its timeouts as generic errors; the cause says.
        other if chain(&other).contains("timed out") => {
            StoreError::TimedOut { key: key.to_owned(), source: Box::new(other) }
        }
        other => StoreError::Request { key: key.to_owned(), source: Box::new(other) },
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl fmt::Display for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", StoreSpec::S3(self.spec.clone()))
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        self.get_with(key, None).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        self.get_with(key, Some(range)).await
    }

    async fn put(&self, key: &str, mut body: BodyStream) -> Result<u64, StoreError> {
        let location = self.location(key)?;
        // Small objects, and bodies that arrive whole (packs, manifests), go
        // up in one PUT without a copy; others switch to multipart as soon
        // as one part's worth has arrived.
        let body_err = |source| StoreError::Body { key: key.to_owned(), source };
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        while len < self.part_size || parts.len() == 1 {
            match body.next().await {
                None => {
                    let payload: PutPayload = parts.into_iter().collect();
                    self.inner.put(&location, payload).await.map_err(|e| map_err(key, e))?;
                    return Ok(len as u64);
                }
                Some(Ok(chunk)) => {
                    len += chunk.len();
                    parts.push(chunk);
                }
                Some(Err(source)) => return Err(body_err(source)),
            }
        }
        let mut first = BytesMut::with_capacity(len);
        for p in parts {
            first.extend_from_slice(&p);
        }
        self.put_multipart(key, &location, first.freeze(), body).await
    }

    /// One PUT with `If-None-Match: *` (object_store's `PutMode::Create`):
    /// S3 refuses it with 412 when the key exists. Garage accepts and
    /// ignores the header, so there it can overwrite.
    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let location = self.location(key)?;
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&location, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let location = self.location(key)?;
        match self.inner.head(&location).await {
            Ok(meta) => {
                Ok(Some(ObjectInfo { key: key.to_owned(), size: meta.size, last_modified: meta.last_modified.into() }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_up_to(prefix, usize::MAX).await
    }

    async fn list_first(&self, prefix: &str, max: usize) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_up_to(prefix, max).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let location = self.location(key)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        }
    }
}
