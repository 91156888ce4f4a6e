//! Lockfile keys: a cache key derived from the files that define a repo's
//! dependencies, so that a site whose dependencies change gets a new key
//! (and a cold, then fresh, cache) while one whose only edits are elsewhere
//! keeps its warm one.
//!
//! The rules are on [`lock_key`].

mod canon;

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use canon::Top;
use rustix::fs::{Mode, OFlags};
use serde::Serialize;

/// The files looked for, at the repo's top level, in hashing order.
pub const LOCK_KEY_FILES: &[&str] = &[
    "deno.json",
    "deno.jsonc",
    "deno.lock",
    "package.json",
    "package-lock.json",
    "bun.lock",
    "bun.lockb",
    "pnpm-lock.yaml",
    "yarn.lock",
];

/// The `deno.json` fields that count: dependency definitions and the
/// settings that change what Deno downloads or where it puts it.
pub const DENO_CONFIG_FIELDS: &[&str] =
    &["imports", "scopes", "importMap", "lock", "nodeModulesDir", "vendor", "unstable", "workspace", "links", "patch"];

struct DenoConfigFields;

impl canon::Fields for DenoConfigFields {
    const FIELDS: Option<&'static [&'static str]> = Some(DENO_CONFIG_FIELDS);
}

/// The `package.json` fields that count.
pub const PACKAGE_JSON_FIELDS: &[&str] = &[
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "overrides",
    "resolutions",
    "workspaces",
    "packageManager",
    "pnpm",
];

struct PackageJsonFields;

impl canon::Fields for PackageJsonFields {
    const FIELDS: Option<&'static [&'static str]> = Some(PACKAGE_JSON_FIELDS);
}

/// The version tag hashed first: a change of the rules changes it, and so
/// every key.
pub const SCHEME: &str = "sandcache-lockkey/1";

/// Largest dependency file read: 16 MiB. Real lockfiles are far smaller
/// (see docs/configuration.md, "Lockfile keys"); a larger file is refused,
/// naming it and the cap, rather than keyed.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Largest sum of the dependency files read for one key (an import map
/// included): 32 MiB.
pub const MAX_TOTAL_BYTES: u64 = 32 << 20;

/// Hex digits of the hash in the key.
const SHORT_HEX: usize = 16;

/// A lockfile key and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockKey {
    /// `PREFIX/lock-<16 hex>`, or `lock-<16 hex>` without a prefix.
    pub key: String,
    /// The files hashed, relative to the repo, in hashing order.
    pub files: Vec<String>,
    /// The full BLAKE3 hash, 64 hex digits.
    pub hash: String,
}

/// Why no lockfile key: each names the file (or dir) to look at.
#[derive(Debug, thiserror::Error)]
pub enum LockKeyError {
    #[error("invalid key prefix: {0}")]
    InvalidPrefix(String),
    #[error("no dependency file in {}: looked for {}", dir.display(), LOCK_KEY_FILES.join(", "))]
    NoFiles { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing {}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    #[error("cannot parse {}: {message} at line {line} column {column}", path.display())]
    Parse { path: PathBuf, message: String, line: usize, column: usize },
}

impl LockKeyError {
    /// The file or dir the error is about.
    pub fn path(&self) -> Option<&Path> {
        match self {
            LockKeyError::InvalidPrefix(_) => None,
            LockKeyError::NoFiles { dir: path }
            | LockKeyError::Read { path, .. }
            | LockKeyError::Refused { path, .. }
            | LockKeyError::Parse { path, .. } => Some(path),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// deno.json / deno.jsonc: JSONC, selected fields, maybe an import map.
    DenoConfig,
    /// package.json: strict JSON, selected fields.
    PackageJson,
    /// A JSON lockfile, whole.
    Json { jsonc: bool },
    /// A text lockfile: bytes, CRLF → LF.
    Text,
    /// A binary lockfile: bytes.
    Binary,
}

fn kind(name: &str) -> Kind {
    match name {
        "deno.json" | "deno.jsonc" => Kind::DenoConfig,
        "package.json" => Kind::PackageJson,
        "deno.lock" | "package-lock.json" => Kind::Json { jsonc: false },
        "bun.lock" => Kind::Json { jsonc: true },
        "bun.lockb" => Kind::Binary,
        _ => Kind::Text,
    }
}

/// The lockfile key of the repo at `repo`, under `prefix` when given (which
/// must be a valid key itself, see [`crate::validate_key`]).
///
/// Reads the dependency files present at the top level of the repo
/// ([`LOCK_KEY_FILES`]), normalizes each, and hashes them:
///
/// * `deno.json`, `deno.jsonc`: parsed as JSONC (comments, trailing commas:
///   what Deno accepts); only the fields that decide what lands in DENO_DIR
///   count: `imports`, `scopes`, `importMap`, `lock`, `nodeModulesDir`,
///   `vendor`, `unstable`, `workspace`, `links`, `patch`. Not `tasks`,
///   `fmt`, `lint`, `compilerOptions`, `name`, `version`... A local
///   `importMap` file (a relative path inside the repo) is read too, as
///   JSONC, and counts whole, right after its config (listed by its
///   path); a remote one (`https:`, `file:`...) counts by its URL only. A
///   lockfile at a custom `lock` path is not read (its setting counts). An
///   empty file counts as `{}`.
/// * `package.json`: strict JSON; only `dependencies`, `devDependencies`,
///   `optionalDependencies`, `peerDependencies`, `peerDependenciesMeta`,
///   `overrides`, `resolutions`, `workspaces`, `packageManager` and `pnpm`
///   count; never `scripts`, `name`, `version`, `description`...
/// * `deno.lock`, `package-lock.json` (strict JSON) and `bun.lock` (JSONC):
///   the whole content, parsed.
/// * `pnpm-lock.yaml`, `yarn.lock`: the bytes, with CRLF turned into LF.
/// * `bun.lockb` (binary): the bytes as they are.
///
/// Parsed files are written back as canonical JSON (object keys sorted by
/// their UTF-8 bytes, no whitespace, array order kept, numbers and strings
/// as `serde_json` writes them, of a key given twice the last value; a
/// leading BOM is dropped): reformatting, comments and key order never
/// change the key. It is made without a value tree (see `canon`), in
/// memory a small multiple of the file.
/// The hash is BLAKE3 over a version tag (`sandcache-lockkey/1`) then, for each present
/// file in the fixed order above, its name and its normalized bytes, each
/// preceded by its length (u64, little-endian). The key is
/// `[PREFIX/]lock-` and the hash's first 16 hex digits (64 bits: plenty to
/// tell one site's dependency sets apart).
///
/// Files are opened relative to the repo dir with `O_NOFOLLOW`, regular
/// files only, at most 16 MiB each and 32 MiB in all (`MAX_FILE_BYTES`,
/// `MAX_TOTAL_BYTES`): a repo is untrusted, a symlinked `deno.json` could
/// point anywhere (`/proc/self/environ`), and a huge lockfile must not
/// exhaust the runner that keys it. Blocking: call it off async threads.
pub fn lock_key(repo: &Path, prefix: Option<&str>) -> Result<LockKey, LockKeyError> {
    if let Some(p) = prefix {
        crate::validate_key(p).map_err(LockKeyError::InvalidPrefix)?;
    }
    let dir = rustix::fs::open(repo, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| LockKeyError::Read { path: repo.to_path_buf(), source: e.into() })?;
    // Each file is hashed as soon as it is normalized, then dropped: at
    // most one file and its canonical form are in memory at a time.
    let mut hasher = blake3::Hasher::new();
    frame(&mut hasher, SCHEME.as_bytes());
    // The files hashed, as listed.
    let mut files: Vec<String> = Vec::new();
    let mut budget = MAX_TOTAL_BYTES;
    for &name in LOCK_KEY_FILES {
        let path = repo.join(name);
        let Some(bytes) = read_in_repo(&dir, repo, Path::new(name), &mut budget)? else { continue };
        match kind(name) {
            Kind::DenoConfig => {
                let config = parse_json::<DenoConfigFields>(&path, &bytes, true)?;
                drop(bytes);
                frame(&mut hasher, name.as_bytes());
                match config.top() {
                    // An empty file (or `null`) counts as `{}`.
                    Top::Null => frame(&mut hasher, b"{}"),
                    Top::Object => frame_doc(&mut hasher, &path, &config)?,
                    Top::Other => return Err(not_an_object(&path)),
                }
                files.push(name.to_owned());
                let import_map = match config.import_map() {
                    Some(spec) => local_import_map(&path, spec)?,
                    None => None,
                };
                drop(config);
                if let Some(rel) = import_map {
                    let listed = rel.to_string_lossy().into_owned();
                    // Counted already (both configs name it), or counted as itself.
                    if files.contains(&listed) || LOCK_KEY_FILES.contains(&listed.as_str()) {
                        continue;
                    }
                    let map_path = repo.join(&rel);
                    let Some(map_bytes) = read_in_repo(&dir, repo, &rel, &mut budget)? else {
                        let source = io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("the importMap of {name} names it, and it does not exist"),
                        );
                        return Err(LockKeyError::Read { path: map_path, source });
                    };
                    let map = parse_json::<canon::Whole>(&map_path, &map_bytes, true)?;
                    drop(map_bytes);
                    frame(&mut hasher, format!("importMap:{listed}").as_bytes());
                    frame_doc(&mut hasher, &map_path, &map)?;
                    files.push(listed);
                }
                continue;
            }
            Kind::PackageJson => {
                let package = parse_json::<PackageJsonFields>(&path, &bytes, false)?;
                drop(bytes);
                if package.top() != Top::Object {
                    return Err(not_an_object(&path));
                }
                frame(&mut hasher, name.as_bytes());
                frame_doc(&mut hasher, &path, &package)?;
            }
            Kind::Json { jsonc } => {
                let doc = parse_json::<canon::Whole>(&path, &bytes, jsonc)?;
                drop(bytes);
                frame(&mut hasher, name.as_bytes());
                frame_doc(&mut hasher, &path, &doc)?;
            }
            Kind::Text => {
                frame(&mut hasher, name.as_bytes());
                frame_crlf_to_lf(&mut hasher, &bytes);
            }
            Kind::Binary => {
                frame(&mut hasher, name.as_bytes());
                frame(&mut hasher, &bytes);
            }
        }
        files.push(name.to_owned());
    }
    if files.is_empty() {
        return Err(LockKeyError::NoFiles { dir: repo.to_path_buf() });
    }
    let hash = hasher.finalize().to_hex().to_string();
    let short = &hash[..SHORT_HEX];
    let key = match prefix {
        Some(p) => format!("{p}/lock-{short}"),
        None => format!("lock-{short}"),
    };
    // A valid prefix and a hex name always make a valid key; checked anyway.
    crate::validate_key(&key).map_err(LockKeyError::InvalidPrefix)?;
    Ok(LockKey { key, files, hash })
}

fn frame(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Frames a document's canonical text, written straight into the hasher.
fn frame_doc<F>(hasher: &mut blake3::Hasher, path: &Path, doc: &canon::Doc<F>) -> Result<(), LockKeyError> {
    let failed = |source: io::Error| LockKeyError::Read { path: path.to_path_buf(), source };
    let len = doc.len().map_err(failed)?;
    hasher.update(&len.to_le_bytes());
    let mut w = io::BufWriter::with_capacity(64 << 10, &mut *hasher);
    doc.write_to(&mut w).and_then(|()| w.flush()).map_err(failed)
}

/// Frames text with each CRLF turned into LF, without a copy.
fn frame_crlf_to_lf(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    let crlfs = bytes.windows(2).filter(|w| w == b"\r\n").count();
    hasher.update(&((bytes.len() - crlfs) as u64).to_le_bytes());
    for_each_crlf_to_lf(bytes, |piece| {
        hasher.update(piece);
    });
}

/// The pieces of `bytes` that are left once the CR of each CRLF is dropped.
fn for_each_crlf_to_lf(bytes: &[u8], mut piece: impl FnMut(&[u8])) {
    let mut from = 0;
    for (i, w) in bytes.windows(2).enumerate() {
        if w == b"\r\n" {
            piece(&bytes[from..i]);
            from = i + 1;
        }
    }
    piece(&bytes[from..]);
}

fn not_an_object(path: &Path) -> LockKeyError {
    LockKeyError::Parse { path: path.to_path_buf(), message: "expected a JSON object".into(), line: 1, column: 1 }
}

/// The repo-relative path of a deno config's `importMap` when it names a
/// local file; `None` for a URL (it counts by its value only). A path
/// leaving the repo is refused.
fn local_import_map(config: &Path, spec: &str) -> Result<Option<PathBuf>, LockKeyError> {
    if has_url_scheme(spec) {
        return Ok(None);
    }
    let refuse =
        |why: &str| LockKeyError::Refused { path: config.to_path_buf(), why: format!("importMap `{spec}` {why}") };
    let mut rel = PathBuf::new();
    for c in Path::new(spec).components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("is outside the repo: only a relative path inside it is read"));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(Some(rel))
}

/// `scheme:` as in RFC 3986 (a letter, then letters, digits, `+`, `-`, `.`),
/// at least two characters so that nothing like a drive letter counts.
fn has_url_scheme(spec: &str) -> bool {
    let Some((scheme, _)) = spec.split_once(':') else { return false };
    scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Reads `rel` under the open repo dir: every component opened relative to
/// its parent with `O_NOFOLLOW`, the file a regular one of at most
/// [`MAX_FILE_BYTES`] and of at most `budget` bytes (what is left of
/// [`MAX_TOTAL_BYTES`], less this file afterwards). `None` when it does
/// not exist.
fn read_in_repo(dir: &OwnedFd, repo: &Path, rel: &Path, budget: &mut u64) -> Result<Option<Vec<u8>>, LockKeyError> {
    let names: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let Some((last, parents)) = names.split_last() else { return Ok(None) };
    let mut at = repo.to_path_buf();
    let mut parent: Option<OwnedFd> = None;
    for name in parents {
        at.push(name);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let opened = rustix::fs::openat(parent.as_ref().unwrap_or(dir), *name, flags, Mode::empty());
        parent = Some(match opened {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::NOTDIR) if is_symlink(parent.as_ref().unwrap_or(dir), name) => {
                return Err(symlink(&at));
            }
            Err(e) => return Err(LockKeyError::Read { path: at, source: e.into() }),
        });
    }
    at.push(last);
    let path = at;
    // NONBLOCK: opening a fifo planted under the name must not hang.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(parent.as_ref().unwrap_or(dir), *last, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(symlink(&path)),
        Err(e) => return Err(LockKeyError::Read { path, source: e.into() }),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| LockKeyError::Read { path: path.clone(), source: e.into() })?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(LockKeyError::Refused { path, why: "not a regular file".into() });
    }
    // `size`: what it is, or (grown while read) at least.
    let too_large = |size: u64, at_least: bool| {
        let over_file_cap = size > MAX_FILE_BYTES;
        let size = if at_least { format!("at least {size} bytes") } else { format!("{size} bytes") };
        let why = if over_file_cap {
            format!("larger than the cap of {} per dependency file: {size}", mib(MAX_FILE_BYTES))
        } else {
            format!(
                "larger than what is left ({} bytes) of the cap of {} on all the dependency files of a repo: {size}",
                *budget,
                mib(MAX_TOTAL_BYTES)
            )
        };
        LockKeyError::Refused { path: path.clone(), why }
    };
    let limit = MAX_FILE_BYTES.min(*budget);
    if st.st_size as u64 > limit {
        return Err(too_large(st.st_size as u64, false));
    }
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    // The file may grow as it is read: what was read counts.
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| LockKeyError::Read { path: path.clone(), source })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, true));
    }
    *budget -= bytes.len() as u64;
    Ok(Some(bytes))
}

/// Whether `name` under `dir` is a symlink (`O_DIRECTORY|O_NOFOLLOW` on one
/// fails with `ENOTDIR`, as on a file).
fn is_symlink(dir: &OwnedFd, name: &std::ffi::OsStr) -> bool {
    rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink)
}

/// `16 MiB (16777216 bytes)`.
fn mib(bytes: u64) -> String {
    format!("{} MiB ({bytes} bytes)", bytes >> 20)
}

fn symlink(path: &Path) -> LockKeyError {
    LockKeyError::Refused {
        path: path.to_path_buf(),
        why: "it is a symlink: dependency files are read only as regular files inside the repo".into(),
    }
}

/// Parses JSON (strict) or JSONC (what Deno accepts) for its canonical
/// form; errors carry line and column.
fn parse_json<F: canon::Fields>(path: &Path, bytes: &[u8], jsonc: bool) -> Result<canon::Doc<F>, LockKeyError> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
        LockKeyError::Parse { path: path.to_path_buf(), message: "not valid UTF-8".into(), line, column }
    })?;
    let options = if jsonc {
        jsonc_parser::ParseOptions::default()
    } else {
        jsonc_parser::ParseOptions {
            allow_comments: false,
            allow_loose_object_property_names: false,
            allow_trailing_commas: false,
            allow_missing_commas: false,
            allow_single_quoted_strings: false,
            allow_hexadecimal_numbers: false,
            allow_unary_plus_numbers: false,
            allow_bare_decimal_point_numbers: false,
            allow_non_finite_numbers: false,
            allow_extended_string_escapes: false,
        }
    };
    jsonc_parser::parse_to_serde_value::<canon::Doc<F>>(text, &options).map_err(|e| LockKeyError::Parse {
        path: path.to_path_buf(),
        message: e.kind().to_string(),
        line: e.line_display(),
        column: e.column_display(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = tmp.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        tmp
    }

    fn key_of(files: &[(&str, &str)]) -> LockKey {
        lock_key(repo(files).path(), None).unwrap()
    }

    const DENO: &str = r#"{"imports": {"$fresh/": "https://deno.land/x/fresh@1.6.8/", "preact": "npm:preact@10.19.6"},
        "tasks": {"start": "deno run -A main.ts"}, "lock": false}"#;

    #[test]
    fn lockkey_deno_json_with_lock_false_alone_gives_a_stable_key() {
        let a = key_of(&[("deno.json", DENO)]);
        let b = key_of(&[("deno.json", DENO)]);
        assert_eq!(a, b);
        assert_eq!(a.files, ["deno.json"]);
        assert_eq!(a.hash.len(), 64);
        assert!(a.key.starts_with("lock-") && a.key.len() == 5 + 16, "{}", a.key);
        assert_eq!(a.key[5..], a.hash[..16]);
        crate::validate_key(&a.key).unwrap();
    }

    #[test]
    fn lockkey_reformatting_comments_key_order_and_bom_do_not_change_it() {
        let reformatted = "\u{feff}// the site's config\n{\r\n  \"lock\": false, /* no lockfile */\r\n  \"tasks\": {},\r\n  \
            \"imports\": {\r\n    \"preact\": \"npm:preact@10.19.6\",\r\n    \"$fresh/\": \"https://deno.land/x/fresh@1.6.8/\",\r\n  },\r\n}\r\n";
        assert_eq!(key_of(&[("deno.json", DENO)]).hash, key_of(&[("deno.json", reformatted)]).hash);
    }

    #[test]
    fn lockkey_tasks_fmt_and_compiler_options_do_not_count_imports_do() {
        let base = key_of(&[("deno.json", DENO)]).hash;
        let tasks = DENO.replace("deno run -A main.ts", "deno run -A --watch main.ts");
        assert_eq!(base, key_of(&[("deno.json", &tasks)]).hash);
        let more = DENO.replace(r#""lock": false"#, r#""lock": false, "fmt": {"lineWidth": 100}, "compilerOptions": {"jsx": "react-jsx"}, "name": "@site/x", "version": "1.2.3""#);
        assert_eq!(base, key_of(&[("deno.json", &more)]).hash);
        let imports = DENO.replace("10.19.6", "10.20.0");
        assert_ne!(base, key_of(&[("deno.json", &imports)]).hash);
        let scopes = DENO.replace(r#""lock": false"#, r#""lock": false, "scopes": {"https://x/": {"a": "b"}}"#);
        assert_ne!(base, key_of(&[("deno.json", &scopes)]).hash);
        let node_modules = DENO.replace(r#""lock": false"#, r#""lock": false, "nodeModulesDir": "auto""#);
        assert_ne!(base, key_of(&[("deno.json", &node_modules)]).hash);
    }

    #[test]
    fn lockkey_deno_json_and_deno_jsonc_are_different_files() {
        assert_ne!(key_of(&[("deno.json", DENO)]).hash, key_of(&[("deno.jsonc", DENO)]).hash);
        assert_eq!(key_of(&[("deno.jsonc", DENO)]).files, ["deno.jsonc"]);
    }

    #[test]
    fn lockkey_adding_a_lockfile_changes_it_and_each_kind_counts() {
        let base = key_of(&[("deno.json", DENO)]);
        let kinds = [
            ("deno.lock", r#"{"version": "4", "remote": {}}"#),
            ("package.json", r#"{"dependencies": {"react": "^18"}}"#),
            ("package-lock.json", r#"{"lockfileVersion": 3, "packages": {}}"#),
            ("bun.lock", "{\"lockfileVersion\": 1, \"packages\": {},}"),
            ("bun.lockb", "\0\u{1}binary"),
            ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
            ("yarn.lock", "# yarn lockfile v1\n"),
        ];
        let mut seen = vec![base.hash.clone()];
        for (name, content) in kinds {
            let k = key_of(&[("deno.json", DENO), (name, content)]);
            assert_eq!(k.files, ["deno.json", name]);
            assert!(!seen.contains(&k.hash), "{name} did not change the key");
            seen.push(k.hash);
            // Each kind alone gives a key too.
            assert_eq!(key_of(&[(name, content)]).files, [name]);
        }
    }

    #[test]
    fn lockkey_json_lockfiles_are_canonical_text_ones_crlf_insensitive() {
        let a = key_of(&[("deno.lock", r#"{"version":"4","remote":{"b":"2","a":"1"}}"#)]);
        let b = key_of(&[(
            "deno.lock",
            "{\n  \"remote\": {\n    \"a\": \"1\",\n    \"b\": \"2\"\n  },\n  \"version\": \"4\"\n}\n",
        )]);
        assert_eq!(a.hash, b.hash);
        let c = key_of(&[("deno.lock", r#"{"version":"4","remote":{"b":"3","a":"1"}}"#)]);
        assert_ne!(a.hash, c.hash);
        let bun = key_of(&[("bun.lock", "{\n  // c\n  \"lockfileVersion\": 1,\n}\n")]);
        assert_eq!(bun.hash, key_of(&[("bun.lock", r#"{"lockfileVersion":1}"#)]).hash);
        for name in ["pnpm-lock.yaml", "yarn.lock"] {
            let lf = key_of(&[(name, "a:\n  b: 1\n")]);
            assert_eq!(lf.hash, key_of(&[(name, "a:\r\n  b: 1\r\n")]).hash, "{name}");
            assert_ne!(lf.hash, key_of(&[(name, "a:\n  b: 2\n")]).hash, "{name}");
        }
        // Binary: bytes as they are, CR included.
        assert_ne!(key_of(&[("bun.lockb", "a\r\n")]).hash, key_of(&[("bun.lockb", "a\n")]).hash);
    }

    #[test]
    fn lockkey_package_json_counts_dependencies_not_scripts_or_version() {
        let pkg = r#"{"name": "site", "version": "1.0.0", "scripts": {"dev": "vite"},
            "dependencies": {"react": "^18.2.0"}, "devDependencies": {"vite": "^5"}}"#;
        let base = key_of(&[("package.json", pkg)]).hash;
        let cosmetic =
            pkg.replace("1.0.0", "1.0.1").replace("vite\"}", "vite --host\"}").replace("\"site\"", "\"other\"");
        assert_eq!(base, key_of(&[("package.json", &cosmetic)]).hash);
        assert_ne!(base, key_of(&[("package.json", &pkg.replace("^18.2.0", "^18.3.0"))]).hash);
        assert_ne!(base, key_of(&[("package.json", &pkg.replace("^5", "^6"))]).hash);
        let overrides = pkg.replace(r#""name""#, r#""overrides": {"x": "1"}, "name""#);
        assert_ne!(base, key_of(&[("package.json", &overrides)]).hash);
    }

    #[test]
    fn lockkey_strict_json_files_refuse_comments_jsonc_ones_accept_them() {
        let tmp = repo(&[("package.json", "{\n  // no\n  \"dependencies\": {}\n}")]);
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(e, LockKeyError::Parse { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("package.json"), "{e}");
    }

    #[test]
    fn lockkey_bad_jsonc_names_the_file_line_and_column() {
        let tmp = repo(&[("deno.json", "{\n  \"imports\": {\n    \"a\": \n  }\n}\n")]);
        let e = lock_key(tmp.path(), None).unwrap_err();
        let LockKeyError::Parse { path, line, column, .. } = &e else { panic!("{e}") };
        assert_eq!((path.as_path(), *line), (tmp.path().join("deno.json").as_path(), 4), "{e}");
        assert!(*column >= 1);
        let msg = e.to_string();
        assert!(msg.contains("deno.json") && msg.contains("line 4 column"), "{msg}");
        let tmp = repo(&[("deno.json", "[1, 2]")]);
        assert!(matches!(lock_key(tmp.path(), None).unwrap_err(), LockKeyError::Parse { .. }));
        let tmp = repo(&[("deno.lock", "{\"a\": 1}\n\u{0}")]);
        assert!(matches!(lock_key(tmp.path(), None).unwrap_err(), LockKeyError::Parse { line: 2, .. }));
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("deno.json"), b"{\"imports\": \"\xff\"}").unwrap();
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(e, LockKeyError::Parse { line: 1, column: 14, .. }), "{e}");
    }

    #[test]
    fn lockkey_empty_deno_json_is_an_empty_object() {
        assert_eq!(key_of(&[("deno.json", "")]).hash, key_of(&[("deno.json", "{ /* nothing */ }")]).hash);
        let tmp = repo(&[("package.json", "")]);
        assert!(matches!(lock_key(tmp.path(), None).unwrap_err(), LockKeyError::Parse { .. }));
    }

    #[test]
    fn lockkey_no_file_is_an_error_naming_the_dir_and_files() {
        let tmp = repo(&[("main.ts", "console.log(1)"), ("sub/deno.json", DENO)]);
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(e, LockKeyError::NoFiles { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains(&tmp.path().display().to_string()) && msg.contains("deno.json") && msg.contains("yarn.lock")
        );
        let missing = tmp.path().join("nope");
        let e = lock_key(&missing, None).unwrap_err();
        assert!(matches!(&e, LockKeyError::Read { path, .. } if *path == missing), "{e}");
    }

    #[test]
    fn lockkey_symlinks_fifos_dirs_and_large_files_are_refused() {
        let tmp = repo(&[("real.json", DENO)]);
        std::os::unix::fs::symlink(tmp.path().join("real.json"), tmp.path().join("deno.json")).unwrap();
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(&e, LockKeyError::Refused { path, .. } if path.ends_with("deno.json")), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");

        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("deno.lock")).unwrap();
        assert!(matches!(lock_key(tmp.path(), None).unwrap_err(), LockKeyError::Refused { .. }));

        let tmp = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("yarn.lock"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let tmp = tempfile::tempdir().unwrap();
        let f = fs::File::create(tmp.path().join("bun.lockb")).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn lockkey_a_local_import_map_counts_a_remote_one_by_url() {
        let config = r#"{"importMap": "./import_map.json", "tasks": {}}"#;
        let map = r#"{"imports": {"preact": "npm:preact@10.19.6"}}"#;
        let a = key_of(&[("deno.json", config), ("import_map.json", map)]);
        assert_eq!(a.files, ["deno.json", "import_map.json"]);
        let reformatted = "{\n  // c\n  \"imports\": {\"preact\": \"npm:preact@10.19.6\",},\n}";
        assert_eq!(a.hash, key_of(&[("deno.json", config), ("import_map.json", reformatted)]).hash);
        assert_ne!(a.hash, key_of(&[("deno.json", config), ("import_map.json", &map.replace("19", "20"))]).hash);

        let nested = key_of(&[("deno.json", r#"{"importMap": "config/map.json"}"#), ("config/map.json", map)]);
        assert_eq!(nested.files, ["deno.json", "config/map.json"]);

        let remote = key_of(&[("deno.json", r#"{"importMap": "https://example.com/map.json"}"#)]);
        assert_eq!(remote.files, ["deno.json"]);

        let tmp = repo(&[("deno.json", config)]);
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(&e, LockKeyError::Read { path, .. } if path.ends_with("import_map.json")), "{e}");

        for outside in ["../map.json", "/proc/self/environ", "a/../../x"] {
            let tmp = repo(&[("deno.json", &format!(r#"{{"importMap": "{outside}"}}"#))]);
            let e = lock_key(tmp.path(), None).unwrap_err();
            assert!(matches!(&e, LockKeyError::Refused { path, .. } if path.ends_with("deno.json")), "{outside}: {e}");
        }

        let tmp = repo(&[("deno.json", r#"{"importMap": "link/map.json"}"#), ("real/map.json", map)]);
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(&e, LockKeyError::Refused { path, .. } if path.ends_with("link")), "{e}");
    }

    #[test]
    fn lockkey_an_import_map_named_twice_counts_once() {
        let config = r#"{"importMap": "map.json"}"#;
        let k = key_of(&[("deno.json", config), ("deno.jsonc", config), ("map.json", "{}")]);
        assert_eq!(k.files, ["deno.json", "map.json", "deno.jsonc"]);
        let k = key_of(&[("deno.json", r#"{"importMap": "./deno.lock"}"#), ("deno.lock", "{}")]);
        assert_eq!(k.files, ["deno.json", "deno.lock"]);
    }

    #[test]
    fn lockkey_the_hash_is_the_documented_framing() {
        let k = key_of(&[
            ("deno.json", "{ \"tasks\": {\"x\": \"y\"}, \"imports\": { \"a\": \"b\" } }"),
            ("yarn.lock", "x\r\n"),
        ]);
        let mut h = blake3::Hasher::new();
        for field in ["sandcache-lockkey/1", "deno.json", r#"{"imports":{"a":"b"}}"#, "yarn.lock", "x\n"] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        assert_eq!(k.hash, h.finalize().to_hex().as_str());
    }

    #[test]
    fn lockkey_prefix_is_checked_and_kept() {
        let tmp = repo(&[("deno.json", DENO)]);
        let k = lock_key(tmp.path(), Some("sites/acme")).unwrap();
        assert_eq!(k.key, format!("sites/acme/lock-{}", &k.hash[..16]));
        crate::validate_key(&k.key).unwrap();
        for bad in ["", "/abs", "a//b", "../x", "a/", "a/./b"] {
            assert!(matches!(lock_key(tmp.path(), Some(bad)), Err(LockKeyError::InvalidPrefix(_))), "{bad:?}");
        }
    }

    #[test]
    fn lockkey_same_content_in_two_dirs_gives_one_key_whatever_the_mtimes() {
        let files = [("deno.json", DENO), ("deno.lock", r#"{"version": "4"}"#)];
        let (a, b) = (repo(&files), repo(&files));
        let old = fs::File::options().write(true).open(b.path().join("deno.json")).unwrap();
        old.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(lock_key(a.path(), None).unwrap(), lock_key(b.path(), None).unwrap());
    }

    /// The canonical text through the streaming path.
    fn canonical(text: &str, jsonc: bool) -> Result<String, LockKeyError> {
        let doc = parse_json::<canon::Whole>(Path::new("x.json"), text.as_bytes(), jsonc)?;
        let mut out = Vec::new();
        doc.write_to(&mut out).unwrap();
        assert_eq!(doc.len().unwrap(), out.len() as u64);
        Ok(String::from_utf8(out).unwrap())
    }

    /// The canonical text as sandcache-lockkey/1 first made it: parsed into
    /// a `serde_json::Value`, written back by hand. The streaming path must
    /// give the same bytes for every input this accepts.
    fn canonical_via_value(text: &str, jsonc: bool) -> Option<String> {
        use serde_json::Value;
        fn write(value: &Value, out: &mut Vec<u8>) {
            match value {
                Value::Object(map) => {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    out.push(b'{');
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                        out.push(b':');
                        write(v, out);
                    }
                    out.push(b'}');
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(v, out);
                    }
                    out.push(b']');
                }
                scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
            }
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let options = if jsonc { jsonc_parser::ParseOptions::default() } else { strict() };
        let value: Value = jsonc_parser::parse_to_serde_value(text, &options).ok()?;
        let mut out = Vec::new();
        write(&value, &mut out);
        Some(String::from_utf8(out).unwrap())
    }

    fn strict() -> jsonc_parser::ParseOptions {
        jsonc_parser::ParseOptions {
            allow_comments: false,
            allow_loose_object_property_names: false,
            allow_trailing_commas: false,
            allow_missing_commas: false,
            allow_single_quoted_strings: false,
            allow_hexadecimal_numbers: false,
            allow_unary_plus_numbers: false,
            allow_bare_decimal_point_numbers: false,
            allow_non_finite_numbers: false,
            allow_extended_string_escapes: false,
        }
    }

    fn assert_same_as_value_tree(text: &str, jsonc: bool) {
        match (canonical_via_value(text, jsonc), canonical(text, jsonc)) {
            (Some(old), Ok(new)) => assert_eq!(old, new, "{text:?}"),
            (None, Err(_)) => {}
            (old, new) => panic!("{text:?} (jsonc {jsonc}): accepted differently: {old:?} / {new:?}"),
        }
    }

    #[test]
    fn lockkey_canonical_json_sorts_keys_and_drops_whitespace() {
        let text = r#"{ "b": [1, {"d": null, "c": "x\ny"}], "a": 1.5 }"#;
        assert_eq!(canonical(text, false).unwrap(), r#"{"a":1.5,"b":[1,{"c":"x\ny","d":null}]}"#);
        let mut lf = Vec::new();
        for_each_crlf_to_lf(b"a\r\nb\rc\r\n\r\n", |p| lf.extend_from_slice(p));
        assert_eq!(lf, b"a\nb\rc\n\n");
        for text in ["", "\r", "\n", "\r\n", "\r\r\n\n", "x\r"] {
            let mut lf = Vec::new();
            for_each_crlf_to_lf(text.as_bytes(), |p| lf.extend_from_slice(p));
            assert_eq!(String::from_utf8(lf).unwrap(), text.replace("\r\n", "\n"), "{text:?}");
        }
        assert!(has_url_scheme("https://x") && has_url_scheme("file:///x") && has_url_scheme("jsr:@std/x"));
        assert!(!has_url_scheme("./x.json") && !has_url_scheme("c:x") && !has_url_scheme("x.json"));
    }

    /// What the `Value` tree did, byte for byte: duplicates (the last
    /// wins), escapes, every number form, unicode, nesting, JSONC.
    #[test]
    fn lockkey_canonical_form_is_the_value_trees_on_tricky_input() {
        let cases = [
            "null",
            "true",
            "0",
            "-0",
            "-0.0",
            "1.0",
            "1e2",
            "1E2",
            "1e15",
            "1e16",
            "1e-7",
            "0.1",
            "1.5e300",
            "123456789012345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "9007199254740993",
            "3.141592653589793238462643",
            "1e400",
            "-1e400",
            "\"\"",
            r#""\u0000\u001f\u007f\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            "\"é 😀 \u{2028}\"",
            "[]",
            "{}",
            "[[]]",
            "[{}]",
            "{\"a\":{}}",
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"a":{"y":1,"x":2},"a":[3]}"#,
            r#"{"":0,"\u0000":1," ":2}"#,
            r#"{"a\"":1,"a#":2,"a\n":3,"a":4,"A":5,"é":6,"z":7,"\ud83d\ude00":8,"\uffff":9}"#,
            r#"[1,{"b":[{"d":1,"c":2},{"d":{},"c":[]}],"a":null},"s",[true,false]]"#,
            " {\n \"a\" : [ 1 , 2 ] \t}\r\n",
            "\u{feff}{\"a\":1}",
            "{\"a\":1}{}",
            "[1,]",
            "{\"a\":1,}",
            "// c\n{\"a\":1}",
            "{/* c */\"a\":1}",
            "{a:1}",
            "{'a':'b'}",
            "[0x1F, +1, .5, 5., Infinity, NaN]",
            "[\"\\x41\", \"\\v\"]",
            "{\"a\" 1}",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "\"\u{1}\"",
            "[\"a\tb\"]",
            "01",
            "-",
            "1.",
            "[",
            "{",
            "{\"a\":",
            "]",
            "\"\\u12\"",
            "tru",
            "nul",
            // Objects in order and out of it, nested either way.
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"c":1,"b":2},"b":[{"x":1},{"y":2,"x":1},{}]}"#,
            r#"[{"a":{"b":{"d":1,"c":2}}},{"a":{"b":{"c":1}}}]"#,
            r#"{"b":{"a":1},"a":{"b":1,"a":[{"z":0,"y":0}]}}"#,
            r#"{"\u0001":1,"\"":2,"\\":3,"a\u001fb":4,"a b":5}"#,
            r#"{"a":{},"b":[],"c":{"x":{}}}"#,
        ];
        for text in cases {
            assert_same_as_value_tree(text, false);
            assert_same_as_value_tree(text, true);
        }
        // serde_json's private marker keys: how the Value tree reads them
        // depends on the serde_json features the whole workspace enables
        // (`raw_value` comes in through another crate), so it is no
        // reference there. They are ordinary keys to the canonical form.
        for (text, want) in [
            (r#"{"$serde_json::private::Number":"1.5"}"#, r#"{"$serde_json::private::Number":"1.5"}"#),
            (r#"{"$serde_json::private::RawValue":"[1]"}"#, r#"{"$serde_json::private::RawValue":"[1]"}"#),
            (
                r#"{"y":2,"x":{"$serde_json::private::RawValue":"1"}}"#,
                r#"{"x":{"$serde_json::private::RawValue":"1"},"y":2}"#,
            ),
        ] {
            assert_eq!(canonical(text, false).unwrap(), want);
        }
        let deep = format!("{}1{}", "[{\"k\":".repeat(200), "}]".repeat(200));
        assert_same_as_value_tree(&deep, false);
        let too_deep = format!("{}{}", "[".repeat(600), "]".repeat(600));
        assert_same_as_value_tree(&too_deep, false);
    }

    /// Real lockfiles of each JSON kind keep their keys.
    #[test]
    fn lockkey_canonical_form_is_the_value_trees_on_real_lockfiles() {
        let deno_lock = r#"{
  "version": "4",
  "specifiers": { "npm:preact@10.29.8": "10.29.8", "npm:hono@4.13.19": "4.13.19" },
  "npm": {
    "preact@10.29.8": { "integrity": "sha512-AAAA==" },
    "hono@4.13.19": { "integrity": "sha512-BBBB==", "dependencies": [ "x@1.0.0" ] }
  },
  "remote": { "https://deno.land/x/a.ts": "0123abcd" },
  "workspace": { "dependencies": [ "npm:hono@4.13.19", "npm:preact@10.29.8" ] }
}
"#;
        let package_lock = r#"{
  "name": "m", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": { "name": "m", "version": "1.0.0", "dependencies": { "ms": "^2.1.3" } },
    "node_modules/ms": { "version": "2.1.3", "resolved": "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz",
      "integrity": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",
      "license": "MIT", "engines": { "node": ">=0.10.0" }, "optional": true, "peer": false }
  }
}
"#;
        for text in [deno_lock, package_lock] {
            assert_same_as_value_tree(text, false);
            assert_same_as_value_tree(text, true);
        }
    }

    /// Random JSON, with whitespace, comments, duplicates and escapes: the
    /// streaming form equals the tree's.
    #[test]
    fn lockkey_canonical_form_is_the_value_trees_on_random_json() {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("\\u0000".to_owned()),
            Just("\\\"".to_owned()),
            Just("é".to_owned()),
            Just("\\ud83d\\ude00".to_owned()),
            "[a-c#\\- ]{0,3}",
        ];
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            (0u32..1000, -20i32..20).prop_map(|(m, e)| format!("{m}.5e{e}")),
            "\"[a-z\\\\/ é\\t]{0,4}\"".prop_map(|s| s.replace('\\', "\\\\").replace('\t', "\\t")),
        ];
        let value = scalar.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(" , "))),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(|v| {
                    let entries: Vec<String> = v.into_iter().map(|(k, v)| format!("\"{k}\" :{v}")).collect();
                    format!("{{ {} }}", entries.join(",\n /* c */ "))
                }),
            ]
        });
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&value, |text| {
                assert_same_as_value_tree(&text, true);
                assert_same_as_value_tree(&text.replace("/* c */", ""), false);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn lockkey_files_over_the_total_cap_are_refused_naming_the_one_over() {
        let tmp = tempfile::tempdir().unwrap();
        // Each at the cap per file: together over the total.
        let mut left = MAX_TOTAL_BYTES;
        for name in ["bun.lockb", "pnpm-lock.yaml", "yarn.lock"] {
            let size = MAX_FILE_BYTES.min(left).max(1);
            fs::File::create(tmp.path().join(name)).unwrap().set_len(size).unwrap();
            left = left.saturating_sub(size);
        }
        let e = lock_key(tmp.path(), None).unwrap_err();
        assert!(matches!(&e, LockKeyError::Refused { path, .. } if path.ends_with("yarn.lock")), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("yarn.lock") && msg.contains(&MAX_TOTAL_BYTES.to_string()), "{msg}");
        // One byte less in all, and it is keyed.
        fs::File::create(tmp.path().join("yarn.lock")).unwrap().set_len(0).unwrap();
        assert_eq!(lock_key(tmp.path(), None).unwrap().files, ["bun.lockb", "pnpm-lock.yaml", "yarn.lock"]);
    }
}
