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

use sandcache_archive::pack::{Entry, Kind, Manifest};

/// The npm package dir `path` is, or lies in: `npm/<registry>/<name>/<version>`
/// (`<name>` may be `@scope/name`).
pub(crate) fn package_root(path: &str) -> Option<&str> {
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
    /// what a directory the restore made held.
    pub(crate) children: HashMap<&'m str, HashSet<&'m str>>,
}

impl<'m> Units<'m> {
    pub(crate) fn of(m: &'m Manifest) -> Units<'m> {
        let kind_at: HashMap<&str, Kind> = m.entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        // A package root listed as anything but a directory is a plain
        // file or symlink (nothing lies under it: validation says so).
        let package = |path: &'m str| package_root(path).filter(|r| kind_at.get(r).is_none_or(|k| *k == Kind::Dir));
        let mut units: BTreeMap<Unit<'m>, Vec<u32>> = BTreeMap::new();
        let mut dirs: BTreeMap<&'m str, Option<u32>> = BTreeMap::new();
        let mut children: HashMap<&'m str, HashSet<&'m str>> = HashMap::new();
        for (i, e) in m.entries.iter().enumerate() {
            let path = e.path.as_str();
            match (package(path), e.kind) {
                (Some(root), _) => units.entry(Unit::Package(root)).or_default().push(i as u32),
                (None, Kind::Dir) => {
                    dirs.insert(path, Some(i as u32));
                }
                (None, _) => units.entry(Unit::Entry(path)).or_default().push(i as u32),
            }
            // Every parent is a directory, listed or not.
            let mut p = path;
            loop {
                let (up, name) = p.rsplit_once('/').unwrap_or(("", p));
                if !children.entry(up).or_default().insert(name) || up.is_empty() {
                    break;
                }
                if package(up).is_none() {
                    dirs.entry(up).or_insert(None);
                }
                p = up;
            }
        }
        Units { m, units, dirs, children }
    }

    /// The shape of each of a unit's entries, by its path relative to the
    /// unit's root, in path order: what two units are compared by.
    pub(crate) fn shape(&self, unit: Unit<'m>) -> Vec<(&'m str, Shape<'m>)> {
        let root = unit.path();
        let mut out: Vec<(&str, Shape)> = self.units[&unit]
            .iter()
            .map(|&i| {
                let e = &self.m.entries[i as usize];
                (e.path[root.len()..].trim_start_matches('/'), Shape::of(e))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Files and symlinks, and the bytes of the files, in these entries.
    pub(crate) fn count(&self, entries: impl Iterator<Item = u32>) -> (u64, u64) {
        entries
            .map(|i| &self.m.entries[i as usize])
            .filter(|e| e.kind != Kind::Dir)
            .fold((0, 0), |(n, b), e| (n + 1, b + if e.kind == Kind::File { e.size } else { 0 }))
    }
}

/// A BLAKE3 digest of what a manifest's tree is, entry by entry, in order
/// (paths and [`Shape`]s, content hashes included): recorded with the
/// state of a dir a restore wrote, so that a later delta knows that the
/// manifest it fetches again for that generation is the one it wrote, and
/// trusts nothing another copy of it would say.
pub(crate) fn digest(m: &Manifest) -> String {
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
    h.finalize().to_hex().to_string()
}

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
        assert_eq!(u.children[""], HashSet::from(["npm", "remote"]));
        assert_eq!(u.children["npm/r/@s/b/2.0.0"], HashSet::from(["lib"]));
        assert_eq!(u.count(0..m.entries.len() as u32), (4, 3));
        let shape = u.shape(Unit::Package("npm/r/a/1.0.0"));
        assert_eq!(shape.iter().map(|s| s.0).collect::<Vec<_>>(), ["", "index.js"]);
        let mut other = m.clone();
        other.entries[2].hot = true;
        other.entries[2].frame = Some(3);
        assert_eq!(digest(&m), digest(&other), "where the bytes are stored is not the tree");
        other.entries[2].hash = Some("1".repeat(64));
        assert_ne!(digest(&m), digest(&other));
    }
}
