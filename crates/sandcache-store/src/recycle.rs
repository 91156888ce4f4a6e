//! Buffers handed out as [`Bytes`] and taken back once the last of those
//! bytes is dropped.
//!
//! The sandcache binary returns freed memory to the OS at once (its
//! allocator's decay, in `.cargo/config.toml`, keeps peak RSS low), so a
//! fresh buffer for each chunk or frame cost a page fault and a cleared page
//! per 4 KiB of every byte a restore moved: a quarter of its page faults.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A few buffers waiting for reuse. Clones share them.
#[derive(Clone)]
pub struct Recycler {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl Recycler {
    /// A recycler that keeps at most `keep` idle buffers; more are freed.
    pub fn new(keep: usize) -> Recycler {
        Recycler { idle: Arc::default(), keep }
    }

    /// An empty buffer with room for `len` bytes: an idle one if there is
    /// (one too small is freed: growing it would copy its old bytes).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(mut buf) if buf.capacity() >= len => {
                buf.clear();
                buf
            }
            _ => Vec::with_capacity(len),
        }
    }

    /// `buf` as bytes; it comes back here once the last of them is dropped.
    pub fn share(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent { buf, home: self.clone() })
    }
}

struct Lent {
    buf: Vec<u8>,
    home: Recycler,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut idle = self.home.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.home.keep {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_last_bytes_are_dropped() {
        let r = Recycler::new(1);
        let mut buf = r.take(1000);
        buf.extend_from_slice(b"hello world");
        let at = buf.as_ptr();
        let bytes = r.share(buf);
        let tail = bytes.slice(6..);
        drop(bytes);
        assert_eq!(&tail[..], b"world");
        assert!(r.idle.lock().unwrap().is_empty(), "still lent while a slice lives");
        drop(tail);
        let again = r.take(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same allocation, reused");
        // Past `keep`, a returned buffer is freed instead.
        let (a, b) = (r.share(r.take(8)), r.share(vec![0; 8]));
        drop((a, b));
        assert_eq!(r.idle.lock().unwrap().len(), 1);
    }
}
