//! Tar streams written byte by byte, so any name, type or target can be
//! written (the tar crate's builder refuses `..`, rightly).

use tar::{EntryType, Header};

/// Builds tar streams byte by byte, so any name, type or target can be
/// written (the tar crate's builder refuses `..`, rightly).
#[derive(Default)]
pub struct Raw(Vec<u8>);

impl Raw {
    pub fn entry(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8], mode: u32) -> Self {
        if name.len() > 99 {
            self = self.long(b'L', name);
        }
        if link.len() > 99 {
            self = self.long(b'K', link);
        }
        let mut h = Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        let n = name.len().min(99);
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(99);
        gnu.linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.data(data)
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, b"", data, 0o644)
    }

    fn long(mut self, kind: u8, value: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::new(kind));
        let mut v = value.to_vec();
        v.push(0);
        h.set_size(v.len() as u64);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.data(&v)
    }

    fn data(mut self, data: &[u8]) -> Self {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0, 1024));
        self.0
    }
}
