//! Channels between the async store side and the blocking archive side.
//!
//! Each carries an explicit end marker: a stream that stops without it (its
//! sender dropped by a cancelled or panicked task) reads as an error, never
//! as a clean end. That keeps a cut download from looking like a complete
//! archive, and a failed archive writer from completing an upload.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use sandcache_store::BodyStream;
use tokio::sync::mpsc;

pub(crate) enum Msg {
    Data(Bytes),
    End,
    Failed(String),
}

/// Chunks in flight between the two sides; with 1 MiB writer chunks and
/// store-sized reader chunks this bounds the memory of a transfer.
pub(crate) const DEPTH: usize = 8;

pub(crate) fn channel() -> (mpsc::Sender<Msg>, mpsc::Receiver<Msg>) {
    mpsc::channel(DEPTH)
}

/// The blocking reading end: what the extractor reads.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Msg>) -> Self {
        ChannelReader { rx, cur: Bytes::new(), ended: false }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.ended = true,
                Some(Msg::Failed(why)) => return Err(io::Error::other(why)),
                None => {
                    return Err(io::Error::other("the download stopped before the end of the object"));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// The blocking writing end: what the archive writer writes into.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

const CHUNK: usize = 1 << 20;

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Msg>) -> Self {
        ChannelWriter { tx, buf: BytesMut::with_capacity(CHUNK) }
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        self.tx.blocking_send(msg).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is buffered and the end marker: the upload may complete.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.send(Msg::End)
    }

    /// Aborts the upload with a reason.
    pub(crate) fn fail(self, why: String) {
        let _ = self.send(Msg::Failed(why));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let chunk = self.buf.split().freeze();
            self.send(Msg::Data(chunk))?;
            self.buf.reserve(CHUNK);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send(Msg::Data(chunk))?;
        }
        Ok(())
    }
}

/// The async reading end as an upload body.
pub(crate) fn body(rx: mpsc::Receiver<Msg>) -> BodyStream {
    Box::pin(futures::stream::unfold(Some(rx), |state| async move {
        let mut rx = state?;
        match rx.recv().await {
            Some(Msg::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Msg::End) => None,
            Some(Msg::Failed(why)) => Some((Err(io::Error::other(why)), None)),
            None => Some((Err(io::Error::other("the archive writer stopped before the end")), None)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_writer_dropped_without_finish_fails_the_body() {
        let (tx, rx) = channel();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx);
            w.write_all(b"partial").unwrap();
            w.flush().unwrap();
            drop(w);
        });
        let items: Vec<_> = body(rx).collect().await;
        writer.await.unwrap();
        assert!(items.last().unwrap().is_err(), "no clean end without the end marker");
    }

    #[tokio::test]
    async fn a_reader_whose_sender_vanishes_errors() {
        let (tx, rx) = channel();
        tx.send(Msg::Data(Bytes::from_static(b"abc"))).await.unwrap();
        drop(tx);
        let got = tokio::task::spawn_blocking(move || {
            let mut s = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut s).map(|_| s)
        })
        .await
        .unwrap();
        assert!(got.is_err());
    }
}
