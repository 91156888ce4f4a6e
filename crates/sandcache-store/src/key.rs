//! What a key may be.

use crate::error::StoreError;

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || key.contains('\0');
    if bad {
        return Err(StoreError::InvalidKey { key: key.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("site/cache.tgz").is_ok());
        for bad in ["", "/abs", "a//b", "../x", "a/./b", "a/"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
