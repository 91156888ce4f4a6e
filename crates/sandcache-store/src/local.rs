//! A store in a local directory: one file per object.

use std::fmt;
use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::StoreError;
use crate::key::check_key;
use crate::recycle::Recycler;
use crate::store::{BodyStream, ByteStream, GetObject, ObjectInfo, Store};

/// Objects as files under a root directory. Writes go to a temporary file
/// beside the object and are renamed over it once complete, so readers see
/// the old object or the new one, never a partial one.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Temporary files carry this marker; listings skip them.
const TMP_MARKER: &str = ".sandcache-tmp-";

impl LocalStore {
    /// Writes `body` to a fresh temp file beside `key`'s path and syncs it;
    /// returns the path, the temp file and the bytes written. The temp file
    /// is removed if writing fails; the caller renames or links it.
    async fn write_temp(&self, key: &str, mut body: BodyStream) -> Result<(PathBuf, PathBuf, u64), StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a checked key has a parent under the root").to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| StoreError::Io { path: dir.clone(), source: e })?;
        let name = path.file_name().expect("checked key").to_string_lossy();
        let tmp = dir.join(format!(".{name}{TMP_MARKER}{:016x}", rand::random::<u64>()));
        let io = |source| StoreError::Io { path: tmp.clone(), source };
        let written: Result<u64, StoreError> = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|source| StoreError::Body { key: key.to_owned(), source })?;
                file.write_all(&chunk).await.map_err(io)?;
                n += chunk.len() as u64;
            }
            file.sync_all().await.map_err(io)?;
            Ok(n)
        }
        .await;
        match written {
            Ok(n) => Ok((path, tmp, n)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn open(&self, key: &str) -> Result<(tokio::fs::File, u64), StoreError> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { key: key.to_owned() });
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let meta = file.metadata().await.map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
        if !meta.is_file() {
            return Err(StoreError::NotFound { key: key.to_owned() });
        }
        Ok((file, meta.len()))
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file://{}", self.root.display())
    }
}

/// Bytes read per chunk of a local object.
const CHUNK: usize = 1 << 20;

/// Up to `len` bytes from `file`'s position on (fewer at its end), read on
/// the blocking pool into recycled chunks: a few, as the reader passes each
/// on or copies it out before asking for more.
fn byte_stream(file: std::fs::File, len: u64, path: PathBuf) -> ByteStream {
    let bufs = Recycler::new(4);
    futures::stream::try_unfold((file, len), move |(mut file, left)| {
        let (bufs, path) = (bufs.clone(), path.clone());
        async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(CHUNK as u64);
            let mut buf = bufs.take(want as usize);
            let read = tokio::task::spawn_blocking(move || {
                let got = std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, want), &mut buf);
                got.map(|n| (file, buf, n as u64))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (file, buf, n) = read.map_err(|source| StoreError::Io { path, source })?;
            Ok((n > 0).then(|| (bufs.share(buf), (file, left - n))))
        }
    })
    .boxed()
}

#[async_trait::async_trait]
impl Store for LocalStore {
    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        let (file, size) = self.open(key).await?;
        Ok(GetObject { size, stream: byte_stream(file.into_std().await, u64::MAX, self.root.join(key)) })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        let (mut file, size) = self.open(key).await?;
        let path = self.root.join(key);
        file.seek(SeekFrom::Start(range.start)).await.map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
        let len = range.end.saturating_sub(range.start);
        Ok(GetObject { size, stream: byte_stream(file.into_std().await, len, path) })
    }

    async fn put(&self, key: &str, body: BodyStream) -> Result<u64, StoreError> {
        let (path, tmp, n) = self.write_temp(key, body).await?;
        let renamed = tokio::fs::rename(&tmp, &path).await;
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        renamed.map_err(|e| StoreError::Io { path, source: e })?;
        Ok(n)
    }

    /// The temp file is linked to the name, which fails if the name exists:
    /// never an overwrite.
    async fn put_new(&self, key: &str, bytes: bytes::Bytes) -> Result<bool, StoreError> {
        let (path, tmp, _) = self.write_temp(key, Box::pin(futures::stream::once(async move { Ok(bytes) }))).await?;
        let linked = tokio::fs::hard_link(&tmp, &path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: m.len(),
                last_modified: m.modified().map_err(|e| StoreError::Io { path, source: e })?,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| StoreError::Io { path: PathBuf::new(), source: std::io::Error::other(e) })?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    // Start from the deepest directory the prefix names, then filter.
    let start = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_owned(),
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StoreError::Io { path: dir, source: e });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::Io { path: dir.clone(), source: e })?;
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path, source: e }),
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(key) = rel.to_str() else { continue };
            if !meta.is_file() || key.contains(TMP_MARKER) || !key.starts_with(prefix) {
                continue;
            }
            let last_modified = meta.modified().map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
            out.push(ObjectInfo { key: key.to_owned(), size: meta.len(), last_modified });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
