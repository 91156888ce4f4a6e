//! Canonical JSON without a value tree.
//!
//! Parsing a lockfile into a `serde_json::Value` costs about twenty times
//! the file in memory when its values are tiny (a map node, a `String` and a
//! `Value` for each entry). Here the parser (the same `jsonc_parser`
//! deserializer as before, so the same inputs are accepted and the same
//! errors given) drives a visitor that writes every value straight into one
//! flat buffer, in input order and without whitespace, and keeps for each
//! object only an index of its entries: where its key is and where its value
//! is in the buffer. Each object's index is sorted when the object closes.
//! The canonical text is then written out once, in key order, by following
//! the indexes; nothing is copied per nesting level.
//!
//! Memory: the buffer (about the file's size without whitespace and keys),
//! the keys once, and 20 bytes per object entry. Time: one pass to parse,
//! and two to write (one counts the bytes for the length that frames them
//! in the hash, the other hashes them).
//!
//! Every byte written matches what `serde_json` wrote for a `Value` parsed
//! from the same text: numbers and strings are formatted by `serde_json`
//! itself, and of a key given twice the last value wins, as in a `Map`.

use std::fmt;
use std::io::{self, Write};
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// No entry: the end of an object's list.
const NONE: u32 = u32::MAX;

/// Which top-level fields of an object count: `None`, all of them.
pub(super) trait Fields {
    const FIELDS: Option<&'static [&'static str]>;
}

/// The whole document counts.
pub(super) struct Whole;

impl Fields for Whole {
    const FIELDS: Option<&'static [&'static str]> = None;
}

/// A document parsed for its canonical form.
pub(super) struct Doc<F> {
    /// Every value in input order, canonical text except for objects: an
    /// object is `{`, its entries' values (no keys, no commas), `}`.
    out: Vec<u8>,
    /// Object keys, decoded, one after the other.
    keys: String,
    /// Every object entry, in input order.
    entries: Vec<Entry>,
    /// Every object, in the order they open: their `start`s increase.
    nodes: Vec<Node>,
    /// The last top-level `importMap`, when that is a string.
    import_map: Option<String>,
    _fields: PhantomData<F>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u32,
    key_len: u32,
    /// The value, in `out`.
    start: u32,
    end: u32,
    /// The next entry of the same object in key order.
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Its `{` in `out`.
    start: u32,
    /// Just past its `}`.
    end: u32,
    /// Its first entry in key order.
    first: u32,
}

/// The document's top-level value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Top {
    Null,
    Object,
    Other,
}

impl<F> Doc<F> {
    pub(super) fn top(&self) -> Top {
        match self.out.first() {
            Some(b'{') => Top::Object,
            Some(b'n') => Top::Null,
            _ => Top::Other,
        }
    }

    /// The value of the last top-level `importMap` field, if a string.
    pub(super) fn import_map(&self) -> Option<&str> {
        self.import_map.as_deref()
    }

    /// The length of the canonical text.
    pub(super) fn len(&self) -> io::Result<u64> {
        let mut count = Counter(0);
        self.write_to(&mut count)?;
        Ok(count.0)
    }

    /// Writes the canonical text.
    pub(super) fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut scratch = Vec::new();
        self.range(w, 0, self.out.len(), &mut scratch)
    }

    /// `out[a..b]` with each object in it written in key order.
    fn range(&self, w: &mut impl Write, a: usize, b: usize, scratch: &mut Vec<u8>) -> io::Result<()> {
        let mut at = a;
        loop {
            let i = self.nodes.partition_point(|n| (n.start as usize) < at);
            match self.nodes.get(i) {
                Some(n) if (n.start as usize) < b => {
                    w.write_all(&self.out[at..n.start as usize])?;
                    self.object(w, n, scratch)?;
                    at = n.end as usize;
                }
                _ => break,
            }
        }
        w.write_all(&self.out[at..b])
    }

    fn object(&self, w: &mut impl Write, node: &Node, scratch: &mut Vec<u8>) -> io::Result<()> {
        w.write_all(b"{")?;
        let mut next = node.first;
        while let Some(e) = self.entries.get(next as usize) {
            if next != node.first {
                w.write_all(b",")?;
            }
            let key = &self.keys[e.key as usize..(e.key + e.key_len) as usize];
            scratch.clear();
            serde_json::to_writer(&mut *scratch, key).map_err(io::Error::other)?;
            w.write_all(scratch)?;
            w.write_all(b":")?;
            self.range(w, e.start as usize, e.end as usize, scratch)?;
            next = e.next;
        }
        w.write_all(b"}")
    }
}

/// Counts what is written.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'de, F: Fields> serde::Deserialize<'de> for Doc<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut doc = Doc {
            out: Vec::new(),
            keys: String::new(),
            entries: Vec::new(),
            nodes: Vec::new(),
            import_map: None,
            _fields: PhantomData,
        };
        ValueSeed { doc: &mut doc, fields: F::FIELDS, top: true, comma: false }.deserialize(d)?;
        Ok(doc)
    }
}

/// An offset as stored: the caps keep every document far below 4 GiB, but
/// a larger one is an error, never a wrong key.
fn offset<E: de::Error>(n: usize) -> Result<u32, E> {
    u32::try_from(n).ok().filter(|&o| o != NONE).ok_or_else(|| E::custom("the document is too large to canonicalise"))
}

struct ValueSeed<'a, F> {
    doc: &'a mut Doc<F>,
    /// At the top level: the fields that count.
    fields: Option<&'static [&'static str]>,
    top: bool,
    /// An array element after the first: a comma goes first.
    comma: bool,
}

impl<'de, F> DeserializeSeed<'de> for ValueSeed<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<F> ValueSeed<'_, F> {
    fn start(&mut self) {
        if self.comma {
            self.doc.out.push(b',');
        }
    }

    /// A scalar, formatted by `serde_json` as it formats it in a `Value`.
    fn scalar<E: de::Error>(mut self, v: impl serde::Serialize) -> Result<(), E> {
        self.start();
        serde_json::to_writer(&mut self.doc.out, &v).map_err(E::custom)
    }
}

impl<'de, F> Visitor<'de> for ValueSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(serde_json::Number::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(serde_json::Number::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As `Value` does: a float with no JSON form is null.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.scalar(n),
            None => self.scalar(()),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.start();
        let doc = self.doc;
        doc.out.push(b'[');
        let mut comma = false;
        while seq.next_element_seed(ValueSeed { doc: &mut *doc, fields: None, top: false, comma })?.is_some() {
            comma = true;
        }
        doc.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.start();
        let doc = self.doc;
        let node = doc.nodes.len();
        doc.nodes.push(Node { start: offset(doc.out.len())?, end: 0, first: NONE });
        doc.out.push(b'{');
        // This object's entries, by index into `doc.entries`.
        let mut ids: Vec<u32> = Vec::new();
        loop {
            let key = doc.keys.len();
            if map.next_key_seed(KeySeed(&mut doc.keys))?.is_none() {
                break;
            }
            // Before the value, whose own keys come next.
            let key_len = doc.keys.len() - key;
            if let Some(fields) = self.fields {
                if !fields.contains(&&doc.keys[key..]) {
                    doc.keys.truncate(key);
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            }
            let start = doc.out.len();
            map.next_value_seed(ValueSeed { doc: &mut *doc, fields: None, top: false, comma: false })?;
            let end = doc.out.len();
            if self.top && &doc.keys[key..key + key_len] == "importMap" {
                // The last one wins, as in a map; only a string names a file.
                doc.import_map = match doc.out[start] {
                    b'"' => serde_json::from_slice(&doc.out[start..end]).ok(),
                    _ => None,
                };
            }
            ids.push(offset(doc.entries.len())?);
            doc.entries.push(Entry {
                key: offset(key)?,
                key_len: offset(key_len)?,
                start: offset(start)?,
                end: offset(end)?,
                next: NONE,
            });
        }
        doc.out.push(b'}');
        let end = offset(doc.out.len())?;
        // Stable: of equal keys, the last in the text comes last, and wins.
        let key_of = |id: u32| {
            let e = &doc.entries[id as usize];
            &doc.keys[e.key as usize..(e.key + e.key_len) as usize]
        };
        ids.sort_by(|&a, &b| key_of(a).cmp(key_of(b)));
        let mut kept = 0;
        for i in 0..ids.len() {
            if i + 1 < ids.len() && key_of(ids[i]) == key_of(ids[i + 1]) {
                continue;
            }
            ids[kept] = ids[i];
            kept += 1;
        }
        ids.truncate(kept);
        for (i, &id) in ids.iter().enumerate() {
            doc.entries[id as usize].next = ids.get(i + 1).copied().unwrap_or(NONE);
        }
        doc.nodes[node].end = end;
        doc.nodes[node].first = ids.first().copied().unwrap_or(NONE);
        Ok(())
    }
}

/// Appends a key to the keys, decoded.
struct KeySeed<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push_str(v);
        Ok(())
    }
}
