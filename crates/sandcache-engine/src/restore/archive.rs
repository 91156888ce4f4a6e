//! Restoring a single archive (the seed's `cache.tgz`, a tar.zst, or
//! `--format tgz`): streamed from the store through the decoder into the
//! extractor, and into a new staging dir, no temporary file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use sandcache_archive::ExtractOptions;
use sandcache_store::{Store, StoreError};

use crate::background::CancelOnDrop;
use crate::error::Error;
use crate::options::RestoreOptions;
use crate::outcome::Done;
use crate::pipe::{self, ChannelReader, Msg};
use crate::target::{DropStaging, Staging, Target};

/// A single archive, streamed: store → decoder → extractor, no temp file.
pub(super) async fn restore_archive(
    store: &dyn Store,
    key: &str,
    target: &Target,
    opts: &RestoreOptions,
) -> Result<(Done, Staging), Error> {
    let object = store.get(key).await?;
    let progress = opts.progress.clone();
    if let Some(p) = &progress {
        p.expected.store(object.size, Ordering::Relaxed);
    }
    let staging = target.create_staging().map_err(Error::io("staging dir"))?;
    // Removed unless swapped in: a download that fails or stalls after the
    // last tar entry leaves a complete extraction nobody will use.
    let mut drop_staging = DropStaging(Some(staging.clone()));

    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let (tx, rx) = pipe::channel();
    let xopts = ExtractOptions {
        final_dir: target.dir.clone(),
        limits: opts.limits,
        cancel: Some(cancel.clone()),
        progress: progress.clone(),
        owner: opts.owner,
    };
    // The clone keeps the staging dir open while the extractor runs, even
    // past a deadline that dropped this future.
    let extract_staging = staging.clone();
    let extraction = tokio::task::spawn_blocking(move || {
        sandcache_archive::extract(ChannelReader::new(rx), &extract_staging.io(), &xopts)
    });

    let download = async {
        let mut stream = object.stream;
        let mut transferred = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    transferred += chunk.len() as u64;
                    if let Some(p) = &progress {
                        p.transferred.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    if tx.send(Msg::Data(chunk)).await.is_err() {
                        // The extractor stopped early; its error says why.
                        return Ok(transferred);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Failed(e.to_string())).await;
                    return Err(e);
                }
            }
        }
        let _ = tx.send(Msg::End).await;
        Ok::<u64, StoreError>(transferred)
    };
    let (downloaded, extracted) = tokio::join!(download, extraction);

    let transferred = downloaded?;
    let stats = extracted.map_err(|e| Error::joined("the extraction thread", e))??;
    drop_staging.0 = None;
    Ok((Done { files: stats.files, bytes: stats.bytes, transferred, ..Done::default() }, staging))
}
