//! Canonical JSON without a value tree.
//!
//! Parsing a lockfile into a `serde_json::Value` cost 16 to 90 times the
//! file in memory when its values are tiny (a map node, a `String` and a
//! `Value` for each entry, a B-tree node for each object). Here the parser
//! (the same `jsonc_parser` deserializer as before, so the same inputs are
//! accepted and the same errors given) drives a visitor that writes the
//! document as it comes into one flat buffer, minified, each key and value
//! formatted as in the canonical form. An object whose keys came in order,
//! each once, with nothing out of order inside it, is then already
//! canonical there and keeps nothing else. Any other keeps an index: one
//! node, and for each entry where its key and value are in the buffer and
//! which entry follows it in key order (sorted when the object closes). The
//! canonical text is written once, following the indexes; nothing is
//! copied per nesting level.
//!
//! Memory: the buffer (about the file without whitespace), 12 bytes per
//! object and 16 per entry of objects out of order, and while an object is
//! open 4 bytes per entry. Time: one pass to parse, and two to write (one
//! counts the bytes, for the length that frames them in the hash, the other
//! hashes them).
//!
//! Every byte written matches what `serde_json` wrote for a `Value` parsed
//! from the same text: numbers and strings are formatted by `serde_json`
//! itself, keys are ordered by their UTF-8 bytes, and of a key given twice
//! the last value wins, as in a `Map`.

use std::cmp::Ordering;
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
    /// The document in input order, minified, keys and values canonical:
    /// the canonical text itself but for the order of entries in the
    /// objects that have a [`Node`].
    out: Vec<u8>,
    /// The entries of objects with a node.
    entries: Vec<Entry>,
    /// The objects not already canonical in `out`, in the order they open:
    /// their `start`s increase.
    nodes: Vec<Node>,
    /// The entries of the objects open while parsing, by index.
    open: Vec<u32>,
    /// The last top-level `importMap`, when that is a string.
    import_map: Option<String>,
    _fields: PhantomData<F>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its key's opening quote in `out`: the key, then `:`, then the value.
    key: u32,
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
        self.range(w, 0, self.out.len())
    }

    /// `out[a..b]` with each object in it that has a node written in key
    /// order.
    fn range(&self, w: &mut impl Write, a: usize, b: usize) -> io::Result<()> {
        let mut at = a;
        loop {
            let i = self.nodes.partition_point(|n| (n.start as usize) < at);
            match self.nodes.get(i) {
                Some(n) if (n.start as usize) < b => {
                    w.write_all(&self.out[at..n.start as usize])?;
                    self.object(w, n)?;
                    at = n.end as usize;
                }
                _ => break,
            }
        }
        w.write_all(&self.out[at..b])
    }

    fn object(&self, w: &mut impl Write, node: &Node) -> io::Result<()> {
        w.write_all(b"{")?;
        let mut next = node.first;
        while let Some(e) = self.entries.get(next as usize) {
            if next != node.first {
                w.write_all(b",")?;
            }
            // The key and its colon, then the value.
            w.write_all(&self.out[e.key as usize..e.start as usize])?;
            self.range(w, e.start as usize, e.end as usize)?;
            next = e.next;
        }
        w.write_all(b"}")
    }
}

/// An entry's key as written, without its quotes: `"key":value`.
fn key_of<'a>(out: &'a [u8], e: &Entry) -> &'a [u8] {
    &out[e.key as usize + 1..(e.start as usize).saturating_sub(2).max(e.key as usize + 1)]
}

/// Orders two keys as written by `serde_json` by the strings they stand
/// for, byte by byte (how a `Map` orders them).
fn cmp_keys(a: &[u8], b: &[u8]) -> Ordering {
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        return a.cmp(b);
    }
    Unescaped(a).cmp(Unescaped(b))
}

/// The bytes of a string as `serde_json` escapes it: `\"`, `\\`, `\b`,
/// `\f`, `\n`, `\r`, `\t` and `\u00XX` for the other control characters;
/// nothing else.
#[derive(Clone, Copy)]
struct Unescaped<'a>(&'a [u8]);

impl Iterator for Unescaped<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        if first != b'\\' {
            self.0 = rest;
            return Some(first);
        }
        let (&kind, rest) = rest.split_first()?;
        self.0 = rest;
        Some(match kind {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hex = rest.get(..4).and_then(|h| std::str::from_utf8(h).ok());
                self.0 = rest.get(4..).unwrap_or_default();
                hex.and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0)
            }
            other => other,
        })
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
            entries: Vec::new(),
            nodes: Vec::new(),
            open: Vec::new(),
            import_map: None,
            _fields: PhantomData,
        };
        ValueSeed { doc: &mut doc, fields: F::FIELDS, top: true, comma: false }.deserialize(d)?;
        doc.open = Vec::new();
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
        let (node, entries, open) = (doc.nodes.len(), doc.entries.len(), doc.open.len());
        doc.nodes.push(Node { start: offset(doc.out.len())?, end: 0, first: NONE });
        doc.out.push(b'{');
        loop {
            let mark = doc.out.len();
            if doc.open.len() > open {
                doc.out.push(b',');
            }
            let key = doc.out.len();
            if map.next_key_seed(KeySeed(&mut doc.out))?.is_none() {
                doc.out.truncate(mark);
                break;
            }
            // Field names need no escape: written, each is itself quoted.
            let is = |name: &str, out: &[u8]| out[key + 1..].strip_suffix(b"\"") == Some(name.as_bytes());
            if let Some(fields) = self.fields {
                if !fields.iter().any(|f| is(f, &doc.out)) {
                    doc.out.truncate(mark);
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            }
            let import_map = self.top && is("importMap", &doc.out);
            doc.out.push(b':');
            let start = doc.out.len();
            map.next_value_seed(ValueSeed { doc: &mut *doc, fields: None, top: false, comma: false })?;
            let end = doc.out.len();
            if import_map {
                // The last one wins, as in a map; only a string names a file.
                doc.import_map = match doc.out.get(start) {
                    Some(b'"') => serde_json::from_slice(&doc.out[start..end]).ok(),
                    _ => None,
                };
            }
            doc.open.push(offset(doc.entries.len())?);
            doc.entries.push(Entry { key: offset(key)?, start: offset(start)?, end: offset(end)?, next: NONE });
        }
        doc.out.push(b'}');
        let end = offset(doc.out.len())?;
        // This object's entries: sorted and relinked in place, then
        // dropped from the stack of open ones.
        let (out, all) = (&doc.out, &doc.entries);
        let key = |id: u32| key_of(out, &all[id as usize]);
        let ids = &mut doc.open[open..];
        let in_order = ids.windows(2).all(|w| cmp_keys(key(w[0]), key(w[1])) == Ordering::Less);
        if in_order && doc.nodes.len() == node + 1 {
            // Canonical as written, and so is everything inside it (what
            // was not dropped its own index): no index.
            doc.open.truncate(open);
            doc.nodes.truncate(node);
            doc.entries.truncate(entries);
            return Ok(());
        }
        // Stable: of equal keys, the last in the text comes last, and wins.
        ids.sort_by(|&a, &b| cmp_keys(key(a), key(b)));
        let mut kept = 0;
        for i in 0..ids.len() {
            if i + 1 < ids.len() && cmp_keys(key(ids[i]), key(ids[i + 1])) == Ordering::Equal {
                continue;
            }
            ids[kept] = ids[i];
            kept += 1;
        }
        for i in 0..kept {
            let next = if i + 1 < kept { doc.open[open + i + 1] } else { NONE };
            let id = doc.open[open + i];
            doc.entries[id as usize].next = next;
        }
        doc.nodes[node].first = if kept > 0 { doc.open[open] } else { NONE };
        doc.open.truncate(open);
        doc.nodes[node].end = end;
        Ok(())
    }
}

/// Writes an object key as `serde_json` writes a string.
struct KeySeed<'a>(&'a mut Vec<u8>);

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
        serde_json::to_writer(self.0, v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys compare, as written, as the strings they stand for.
    #[test]
    fn escaped_keys_order_as_their_strings() {
        use proptest::prelude::*;
        let key = || proptest::string::string_regex("[\\x00-\\x21\"#\\\\a-c\u{7f}é\u{10000}]{0,4}").unwrap();
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&(key(), key()), |(a, b)| {
                let (ja, jb) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
                let inner = |j: &[u8]| j[1..j.len() - 1].to_vec();
                prop_assert_eq!(cmp_keys(&inner(&ja), &inner(&jb)), a.as_bytes().cmp(b.as_bytes()));
                prop_assert_eq!(Unescaped(&inner(&ja)).collect::<Vec<u8>>(), a.as_bytes());
                Ok(())
            })
            .unwrap();
    }
}
