use std::io::{self, Read};

/// How an archive stream is compressed, as told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    /// An uncompressed (ustar or GNU) tar stream.
    None,
}

impl Compression {
    /// Bytes needed to tell the formats apart (the ustar magic sits at 257).
    pub(crate) const SNIFF_LEN: usize = 262;

    /// Detects the compression from the first bytes of a stream, or `None`
    /// when they match no format we read.
    pub(crate) fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// A stream with its first bytes read and put back in front.
pub(crate) type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to `n` bytes from the front of `r` without losing them.
pub(crate) fn sniff<R: Read>(mut r: R, n: usize) -> io::Result<(Vec<u8>, Sniffed<R>)> {
    let mut head = Vec::with_capacity(n);
    (&mut r).take(n as u64).read_to_end(&mut head)?;
    let copy = head.clone();
    Ok((copy, io::Cursor::new(head).chain(r)))
}
