//! Names sandcache keeps for itself inside a cache dir.

/// Top-level entries with this prefix are sandcache's own (staging and trash
/// inside a mounted target dir); they are never archived or fingerprinted.
pub const RESERVED_PREFIX: &str = ".sandcache-";
/// A restore's second phase writes each file under a temporary name with
/// this prefix, in the file's own directory, then renames it into place. At
/// any depth such names are never archived or fingerprinted: a restore
/// killed mid-write leaves one behind.
pub const TAIL_PREFIX: &str = ".sandcache-tail-";
