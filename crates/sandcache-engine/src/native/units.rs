//! What a delta restore replaces whole: its **units**.
//!
//! - An npm package dir, `npm/<registry>/<name>/<version>` (`@scope/name`
//!   counting as the name), with everything in it: Deno takes a package
//!   dir that exists for complete, so one is only ever exchanged or
//!   renamed into place whole, never written file by file.
//! - Any other file or symlink, on its own.
//!
//! Directories outside packages are no unit: they hold units, and follow
//! them (made where missing, their modes and times put back). A manifest's
//! units and directories are [`Units`]; two units are the same when every
//! entry is as a restore would leave it ([`Shape`]): kind, mode, mtime,
//! size, content hash, symlink target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use sandcache_archive::pack::{Entry, Kind, Manifest};

/// The hasher of the sets and maps keyed by a manifest's paths (units,
/// the disk check's directories): foldhash, seeded per process, several
/// times faster than SipHash on paths (nobody outside sees the seed).
pub(crate) type Fast = foldhash::fast::RandomState;

/// The npm package dir `path` is, or lies in: `npm/<registry>/<name>/<version>`
/// (`<name>` may be `@scope/name`). One pass over the path: a delta's plan
/// asks it of every entry.
pub(crate) fn package_root(path: &str) -> Option<&str> {
    const NPM: &str = "npm/";
    let rest = path.strip_prefix(NPM)?.as_bytes();
    let slash = |from: usize| rest[from..].iter().position(|&c| c == b'/').map(|j| from + j);
    // After the registry: the name (two components when scoped), then the version.
    let mut at = slash(0)? + 1;
    let parts = if rest.get(at) == Some(&b'@') { 3 } else { 2 };
    for part in 1..=parts {
        match slash(at) {
            Some(end) if part == parts => return Some(&path[..NPM.len() + end]),
            Some(end) => at = end + 1,
            None if part == parts => return Some(path),
            None => return None,
        }
    }
    None
}

/// The npm package dir a path lies in (strictly: not the dir itself).
pub(crate) fn npm_package_dir(path: &str) -> Option<&str> {
    package_root(path).filter(|root| root.len() < path.len())
}

/// A unit, by the path of its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Unit<'m> {
    /// An npm package dir and everything in it.
    Package(&'m str),
    /// A file or symlink outside any package.
    Entry(&'m str),
}

impl<'m> Unit<'m> {
    pub(crate) fn path(self) -> &'m str {
        match self {
            Unit::Package(p) | Unit::Entry(p) => p,
        }
    }
}

/// An entry as a restore leaves it on disk: its kind, its mode as set
/// (directories keep owner `rwx`, files lose setuid, setgid and sticky,
/// symlinks have none), its mtime (whole seconds from 0), size, content
/// hash and symlink target. What `hot`, frames and offsets say does not
/// show on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape<'m> {
    pub(crate) kind: Kind,
    pub(crate) mode: u32,
    pub(crate) mtime: i64,
    pub(crate) size: u64,
    pub(crate) hash: Option<&'m str>,
    pub(crate) target: Option<&'m str>,
}

impl<'m> Shape<'m> {
    pub(crate) fn of(e: &'m Entry) -> Shape<'m> {
        let mode = match e.kind {
            Kind::Dir => (e.mode & 0o777) | 0o700,
            Kind::File => e.mode & 0o777,
            Kind::Symlink => 0,
        };
        let (hash, target) = match e.kind {
            Kind::File => (e.hash.as_deref(), None),
            Kind::Symlink => (None, e.target.as_deref()),
            Kind::Dir => (None, None),
        };
        let size = if e.kind == Kind::File { e.size } else { 0 };
        Shape { kind: e.kind, mode, mtime: e.mtime.max(0), size, hash, target }
    }
}

/// A manifest seen as units and the directories that hold them.
pub(crate) struct Units<'m> {
    pub(crate) m: &'m Manifest,
    /// Each unit's entries (indices into `m.entries`), in manifest order;
    /// a package's own dir entry among them when it is listed.
    pub(crate) units: BTreeMap<Unit<'m>, Vec<u32>>,
    /// Directories outside packages: listed (their entry) or implied by
    /// the paths under them (`None`).
    pub(crate) dirs: BTreeMap<&'m str, Option<u32>>,
    /// The names in each directory (`""`: the top), packages' insides too:
    /// what a directory the restore made held. Made when first asked for
    /// (see [`Units::children`]): a plan needs none, a check usually only
    /// the top's.
    children: OnceLock<HashMap<&'m str, HashSet<&'m str, Fast>, Fast>>,
    top: OnceLock<HashSet<&'m str, Fast>>,
}

impl<'m> Units<'m> {
    pub(crate) fn of(m: &'m Manifest) -> Units<'m> {
        let roots: Vec<Option<&str>> = m.entries.iter().map(|e| package_root(&e.path)).collect();
        // A package root listed as anything but a directory is a plain
        // file or symlink (nothing lies under it: validation says so).
        let not_dirs: HashSet<&str, Fast> = m
            .entries
            .iter()
            .zip(&roots)
            .filter(|(e, root)| e.kind != Kind::Dir && root.is_some_and(|r| r.len() == e.path.len()))
            .map(|(e, _)| e.path.as_str())
            .collect();
        // Units in the order met: walk order keeps a package's entries
        // together, so an entry nearly always joins the last unit. Sorted
        // and merged once at the end (a map lookup per entry cost most of
        // a delta's comparison).
        let mut met: Vec<(Unit<'m>, Vec<u32>)> = Vec::new();
        let mut add = |unit: Unit<'m>, i: u32| match met.last_mut() {
            Some((last, entries)) if *last == unit => entries.push(i),
            _ => met.push((unit, vec![i])),
        };
        let mut dirs: BTreeMap<&'m str, Option<u32>> = BTreeMap::new();
        let mut last_dir = "";
        for (i, (e, root)) in m.entries.iter().zip(roots).enumerate() {
            let path = e.path.as_str();
            let package = root.filter(|r| not_dirs.is_empty() || !not_dirs.contains(r));
            match (package, e.kind) {
                (Some(root), _) => add(Unit::Package(root), i as u32),
                (None, Kind::Dir) => {
                    dirs.insert(path, Some(i as u32));
                }
                (None, _) => add(Unit::Entry(path), i as u32),
            }
            // Every parent is a directory, listed or not; those of a
            // package's entry up to its root lie in it (or are it), so the
            // walk starts at the root. Walk order lists a directory's
            // entries together: a parent already seen has its own parents
            // too, and the last one seen is seen again most often.
            if let Some((up, _)) = package.unwrap_or(path).rsplit_once('/')
                && up != last_dir
            {
                let mut p = up;
                while !dirs.contains_key(p) {
                    dirs.insert(p, None);
                    match p.rsplit_once('/') {
                        Some((parent, _)) => p = parent,
                        None => break,
                    }
                }
                last_dir = up;
            }
        }
        // Stable: a unit met twice keeps its entries in manifest order.
        met.sort_by(|a, b| a.0.cmp(&b.0));
        let mut units: Vec<(Unit<'m>, Vec<u32>)> = Vec::with_capacity(met.len());
        for (unit, entries) in met {
            match units.last_mut() {
                Some((last, all)) if *last == unit => all.extend(entries),
                _ => units.push((unit, entries)),
            }
        }
        let units = BTreeMap::from_iter(units);
        Units { m, units, dirs, children: OnceLock::new(), top: OnceLock::new() }
    }

    /// The names directory `dir` holds (`""`: the top), as restored.
    pub(crate) fn children(&self, dir: &str) -> Option<&HashSet<&'m str, Fast>> {
        if dir.is_empty() {
            let top = self.top.get_or_init(|| {
                self.m
                    .entries
                    .iter()
                    .map(|e| e.path.split_once('/').map_or(e.path.as_str(), |(first, _)| first))
                    .collect()
            });
            return Some(top);
        }
        let children = self.children.get_or_init(|| {
            let mut children: HashMap<&'m str, HashSet<&'m str, Fast>, Fast> = HashMap::default();
            for e in &self.m.entries {
                let mut p = e.path.as_str();
                while let Some((up, name)) = p.rsplit_once('/') {
                    if !children.entry(up).or_default().insert(name) {
                        break;
                    }
                    p = up;
                }
            }
            children
        });
        children.get(dir)
    }

    /// Whether `unit` is the same in `self` and `other`: entry for entry,
    /// by path relative to its root, the same [`Shape`]. Without sorting
    /// when both list the unit in the same order (one manifest's order is
    /// its walk's, so nearly always).
    pub(crate) fn same(&self, other: &Units<'m>, unit: Unit<'m>) -> bool {
        let (Some(a), Some(b)) = (self.units.get(&unit), other.units.get(&unit)) else { return false };
        if std::ptr::eq(self.m, other.m) {
            return true;
        }
        if a.len() != b.len() {
            return false;
        }
        let in_order = a.iter().zip(b).all(|(&x, &y)| self.rel(unit, x) == other.rel(unit, y));
        in_order || self.shape(unit) == other.shape(unit)
    }

    /// Entry `i` of a unit: its path relative to the unit's root, and its
    /// shape.
    fn rel(&self, unit: Unit<'m>, i: u32) -> (&'m str, Shape<'m>) {
        let e = &self.m.entries[i as usize];
        (e.path[unit.path().len()..].trim_start_matches('/'), Shape::of(e))
    }

    /// The shape of each of a unit's entries, by its path relative to the
    /// unit's root, in path order: what two units are compared by.
    pub(crate) fn shape(&self, unit: Unit<'m>) -> Vec<(&'m str, Shape<'m>)> {
        let mut out: Vec<(&str, Shape)> = self.units[&unit].iter().map(|&i| self.rel(unit, i)).collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// Files and symlinks, and the bytes of the files, in these entries of `m`.
pub(crate) fn count(m: &Manifest, entries: impl Iterator<Item = u32>) -> (u64, u64) {
    entries
        .map(|i| &m.entries[i as usize])
        .filter(|e| e.kind != Kind::Dir)
        .fold((0, 0), |(n, b), e| (n + 1, b + if e.kind == Kind::File { e.size } else { 0 }))
}

/// A BLAKE3 digest of what a manifest's tree is, entry by entry, in order
/// (paths and [`Shape`]s, content hashes included): recorded with the
/// state of a dir a restore wrote, so that a later delta knows that the
/// manifest it fetches again for that generation is the one it wrote, and
/// trusts nothing another copy of it would say.
pub(crate) fn digest(m: &Manifest) -> String {
    // The bytes gathered in a buffer and hashed in large updates: the same
    // digest (BLAKE3 hashes the stream, however it is cut), a fifth of the
    // time of an update per field.
    let mut h = blake3::Hasher::new();
    let mut buf: Vec<u8> = Vec::with_capacity(BUF + 4096);
    for e in &m.entries {
        let s = Shape::of(e);
        buf.extend_from_slice(e.path.as_bytes());
        buf.extend_from_slice(&[0, s.kind as u8]);
        buf.extend_from_slice(&s.mode.to_le_bytes());
        buf.extend_from_slice(&s.mtime.to_le_bytes());
        buf.extend_from_slice(&s.size.to_le_bytes());
        for field in [s.hash, s.target] {
            buf.extend_from_slice(&(field.map_or(u64::MAX, |f| f.len() as u64)).to_le_bytes());
            buf.extend_from_slice(field.unwrap_or_default().as_bytes());
        }
        if buf.len() >= BUF {
            h.update(&buf);
            buf.clear();
        }
    }
    h.update(&buf);
    h.finalize().to_hex().to_string()
}

/// How many bytes [`digest`] gathers before hashing them.
const BUF: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_roots_of_deno_dir_paths() {
        let reg = "npm/registry.npmjs.org";
        for (path, root) in [
            (format!("{reg}/lodash/4.17.21/lodash.js"), Some(format!("{reg}/lodash/4.17.21"))),
            (format!("{reg}/lodash/4.17.21"), Some(format!("{reg}/lodash/4.17.21"))),
            (format!("{reg}/@aws-sdk/client-s3/3.1.0/dist/i.js"), Some(format!("{reg}/@aws-sdk/client-s3/3.1.0"))),
            (format!("{reg}/@aws-sdk/client-s3/3.1.0"), Some(format!("{reg}/@aws-sdk/client-s3/3.1.0"))),
            (format!("{reg}/@aws-sdk/client-s3"), None),
            (format!("{reg}/lodash/registry.json"), Some(format!("{reg}/lodash/registry.json"))),
            (format!("{reg}/lodash"), None),
            ("remote/https/deno.land/x".into(), None),
            ("npm".into(), None),
            ("npmx/a/b/c/d".into(), None),
        ] {
            assert_eq!(package_root(&path).map(str::to_owned), root, "{path}");
        }
        assert_eq!(npm_package_dir(&format!("{reg}/lodash/4.17.21")), None);
    }

    /// `package_root` as it was first written (three passes over the
    /// path): the one-pass version must agree with it on any path.
    fn package_root_by_split(path: &str) -> Option<&str> {
        let mut comps = path.split('/');
        let (Some("npm"), Some(_registry), Some(name)) = (comps.next(), comps.next(), comps.next()) else {
            return None;
        };
        let depth = if name.starts_with('@') { 5 } else { 4 };
        if path.split('/').count() < depth {
            return None;
        }
        let len = path.split('/').take(depth).map(|c| c.len() + 1).sum::<usize>() - 1;
        Some(&path[..len])
    }

    proptest::proptest! {
        #[test]
        fn package_root_in_one_pass_agrees(comps in proptest::collection::vec("(npm|r|@s|a|1|)", 0..8)) {
            let path = comps.join("/");
            proptest::prop_assert_eq!(package_root(&path), package_root_by_split(&path), "{}", path);
        }
    }

    #[test]
    fn a_manifest_as_units_and_dirs() {
        let reg = "npm/r";
        let file = |p: &str| Entry::file(p.into(), 0o644, 1, 1, "0".repeat(64));
        let m = Manifest {
            entries: vec![
                Entry::dir("npm".into(), 0o755, 1),
                Entry::dir(format!("{reg}/a/1.0.0"), 0o755, 1),
                file(&format!("{reg}/a/1.0.0/index.js")),
                file(&format!("{reg}/a/registry.json")),
                file(&format!("{reg}/@s/b/2.0.0/lib/x.js")),
                Entry::symlink("remote/link".into(), "x".into(), 0o777, 1),
            ],
            ..Manifest::empty(3, 0)
        };
        let u = Units::of(&m);
        let keys: Vec<Unit> = u.units.keys().copied().collect();
        assert_eq!(
            keys,
            [
                Unit::Package("npm/r/@s/b/2.0.0"),
                Unit::Package("npm/r/a/1.0.0"),
                Unit::Entry("npm/r/a/registry.json"),
                Unit::Entry("remote/link"),
            ]
        );
        assert_eq!(u.units[&Unit::Package("npm/r/a/1.0.0")], [1, 2]);
        let dirs: Vec<(&str, bool)> = u.dirs.iter().map(|(d, e)| (*d, e.is_some())).collect();
        assert_eq!(
            dirs,
            [
                ("npm", true),
                ("npm/r", false),
                ("npm/r/@s", false),
                ("npm/r/@s/b", false),
                ("npm/r/a", false),
                ("remote", false)
            ]
        );
        let names = |dir: &str| u.children(dir).map(|c| c.iter().copied().collect::<HashSet<&str>>());
        assert_eq!(names(""), Some(HashSet::from(["npm", "remote"])));
        assert_eq!(names("npm/r/@s/b/2.0.0"), Some(HashSet::from(["lib"])));
        assert_eq!(names("npm/r/a"), Some(HashSet::from(["1.0.0", "registry.json"])));
        assert_eq!(count(&m, 0..m.entries.len() as u32), (4, 3));
        let shape = u.shape(Unit::Package("npm/r/a/1.0.0"));
        assert_eq!(shape.iter().map(|s| s.0).collect::<Vec<_>>(), ["", "index.js"]);
        let mut other = m.clone();
        other.entries[2].hot = true;
        other.entries[2].frame = Some(3);
        assert_eq!(digest(&m), digest(&other), "where the bytes are stored is not the tree");
        other.entries[2].hash = Some("1".repeat(64));
        assert_ne!(digest(&m), digest(&other));
    }

    /// The digest a state records must not change between versions (a
    /// dir restored by the last one is still trusted): the stream of each
    /// entry's fields, as first hashed field by field.
    #[test]
    fn the_digest_is_the_stream_of_every_entrys_fields() {
        let mut entries = vec![Entry::dir("npm".into(), 0o755, 1)];
        for i in 0..3000 {
            let hash = format!("{i:064x}");
            entries.push(Entry::file(format!("npm/r/p{i}/1.0.0/index.js"), 0o644, 7, i, hash));
            entries.push(Entry::symlink(format!("remote/l{i}"), format!("../t{i}"), 0o777, 9));
        }
        let m = Manifest { entries, ..Manifest::empty(3, 0) };
        let mut h = blake3::Hasher::new();
        for e in &m.entries {
            let s = Shape::of(e);
            h.update(e.path.as_bytes());
            h.update(&[0, s.kind as u8]);
            h.update(&s.mode.to_le_bytes());
            h.update(&s.mtime.to_le_bytes());
            h.update(&s.size.to_le_bytes());
            for field in [s.hash, s.target] {
                h.update(&(field.map_or(u64::MAX, |f| f.len() as u64)).to_le_bytes());
                h.update(field.unwrap_or_default().as_bytes());
            }
        }
        assert_eq!(digest(&m), h.finalize().to_hex().to_string());
    }
}
