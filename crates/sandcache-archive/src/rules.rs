//! The lexical rules every entry restored passes, from a tar stream or a
//! manifest: what a path and a symlink target may be.

use crate::error::ExtractError;
use crate::limits::Limits;

/// Whether a relative, `/`-separated path is safe to restore: why not,
/// naming it.
pub(crate) fn check_path(path: &str, limits: &Limits) -> Result<(), ExtractError> {
    if path.is_empty() || path.len() > limits.max_path_len {
        return Err(unsafe_entry(&path.chars().take(80).collect::<String>(), "empty path or over the length limit"));
    }
    for c in path.split('/') {
        match c {
            "" | "." => return Err(unsafe_entry(path, "empty or `.` component")),
            ".." => return Err(unsafe_entry(path, "path contains `..`")),
            c if c.len() > 255 => return Err(unsafe_entry(path, "a path component is longer than 255 bytes")),
            c if c.contains('\0') => return Err(unsafe_entry(path, "NUL in a path")),
            _ => {}
        }
    }
    Ok(())
}

/// A symlink may point anywhere under the target, and nowhere else.
///
/// A relative target must be some `..` steps that stay within the
/// symlink's own depth, followed by plain names: `..` after a name is
/// refused, because the kernel resolves it against wherever that name
/// (maybe itself a symlink) leads, not lexically. An absolute target must
/// lie under the final target directory, with no `..` at all.
pub(crate) fn check_symlink_target(
    parents: &[&[u8]],
    target: &[u8],
    prefix: &[Vec<u8>],
    shown: &str,
) -> Result<(), ExtractError> {
    if target.is_empty() {
        return Err(unsafe_entry(shown, "symlink with an empty target"));
    }
    if target.contains(&0) {
        return Err(unsafe_entry(shown, "NUL in a symlink target"));
    }
    let comps: Vec<&[u8]> = target.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
    if target[0] == b'/' {
        let inside = comps.len() >= prefix.len()
            && comps.iter().zip(prefix).all(|(a, b)| *a == b.as_slice())
            && !comps.contains(&&b".."[..]);
        if !inside {
            return Err(unsafe_entry(shown, "symlink points outside the target directory"));
        }
        return Ok(());
    }
    let ups = comps.iter().take_while(|c| **c == b"..").count();
    if comps[ups..].contains(&&b".."[..]) {
        return Err(unsafe_entry(shown, "symlink target has `..` after a name"));
    }
    if ups > parents.len() {
        return Err(unsafe_entry(shown, "symlink points outside the target directory"));
    }
    Ok(())
}

pub(crate) fn unsafe_entry(path: &str, why: &str) -> ExtractError {
    ExtractError::Unsafe { path: path.to_owned(), why: why.to_owned() }
}
