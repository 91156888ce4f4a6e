//! Per-pod, short-lived admin tokens.
//!
//! The platform holds one secret, the *master* (32 bytes). Each pod holds
//! only its own *pod key*, derived from the master and the pod's name, and
//! accepts tokens made with that key that have not expired:
//!
//! ```text
//! pod key = BLAKE3-keyed(master, "sandcache pod key v1\0" ‖ pod name)
//! token   = "sandcache-admin.v1." ‖ EXP ‖ "." ‖ hex(BLAKE3-keyed(pod key, "sandcache-admin.v1." ‖ EXP))
//! ```
//!
//! `EXP` is the expiry in Unix seconds, in decimal. A pod accepts a token
//! whose expiry is in the future and at most [`MAX_TTL`] away. A token that
//! leaks opens one pod until it expires; a pod key that leaks (root in the
//! runner's container) opens that pod alone. `sandcache admin-token` mints
//! both; any BLAKE3 library can do the same.

use std::time::Duration;

/// What every token starts with; the proxy strips any header value holding
/// one, whichever pod it was made for.
pub const PREFIX: &str = "sandcache-admin.v1.";

/// The longest a token may still be valid when it is presented.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

const POD_KEY_CONTEXT: &[u8] = b"sandcache pod key v1\0";

/// A 32-byte key: the master or a pod key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// 64 hex digits, surrounding whitespace ignored (a key file's text).
    pub fn from_hex(text: &str) -> Result<Key, String> {
        let text = text.trim();
        blake3::Hash::from_hex(text)
            .map(|h| Key(*h.as_bytes()))
            .map_err(|_| format!("expected 64 hex digits (32 bytes), found {} characters", text.chars().count()))
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The pod key of `pod`, from the master.
    pub fn pod_key(&self, pod: &str) -> Key {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(POD_KEY_CONTEXT).update(pod.as_bytes());
        Key(*h.finalize().as_bytes())
    }

    /// A token valid until `expires` (Unix seconds), made with this pod key.
    pub fn mint(&self, expires: u64) -> String {
        format!("{PREFIX}{expires}.{}", self.mac(expires).to_hex())
    }

    fn mac(&self, expires: u64) -> blake3::Hash {
        blake3::keyed_hash(&self.0, format!("{PREFIX}{expires}").as_bytes())
    }

    /// Whether `token` was made with this pod key and is valid at `now`
    /// (Unix seconds): why not, otherwise.
    pub fn verify(&self, token: &str, now: u64) -> Result<(), &'static str> {
        let rest = token.strip_prefix(PREFIX).ok_or("not a sandcache admin token")?;
        let (exp, mac) = rest.split_once('.').ok_or("malformed token")?;
        if exp.is_empty() || exp.len() > 20 || !exp.bytes().all(|b| b.is_ascii_digit()) {
            return Err("malformed token");
        }
        let exp: u64 = exp.parse().map_err(|_| "malformed token")?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| "malformed token")?;
        // blake3::Hash compares in constant time.
        if mac != self.mac(exp) {
            return Err("token not made for this pod");
        }
        if exp <= now {
            return Err("token expired");
        }
        if exp - now > MAX_TTL.as_secs() {
            return Err("token valid for longer than 24 h");
        }
        Ok(())
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_open_their_own_pod_until_they_expire() {
        let master = Key::from_hex(&"11".repeat(32)).unwrap();
        let (a, b) = (master.pod_key("runner-a"), master.pod_key("runner-b"));
        assert_ne!(a, b);
        let now = 1_800_000_000;
        let t = a.mint(now + 300);
        assert!(t.starts_with(PREFIX));
        assert_eq!(a.verify(&t, now), Ok(()));
        assert_eq!(b.verify(&t, now), Err("token not made for this pod"));
        assert_eq!(a.verify(&t, now + 300), Err("token expired"));
        assert_eq!(a.verify(&a.mint(now + 2 * 86400), now), Err("token valid for longer than 24 h"));
        let forged = t.replace(&format!("{}.", now + 300), &format!("{}.", now + 600));
        assert_eq!(a.verify(&forged, now), Err("token not made for this pod"));
        for bad in ["", "Bearer x", "sandcache-admin.v1.", "sandcache-admin.v1.12", "sandcache-admin.v1.x.00"] {
            assert!(a.verify(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_derivation_is_the_documented_one() {
        let master = Key::from_hex(&"00".repeat(32)).unwrap();
        let mut h = blake3::Hasher::new_keyed(&[0; 32]);
        h.update(b"sandcache pod key v1\0runner-0");
        let pod = master.pod_key("runner-0");
        assert_eq!(pod.to_hex(), h.finalize().to_hex().to_string());
        let mac = blake3::keyed_hash(&pod.0, b"sandcache-admin.v1.42");
        assert_eq!(pod.mint(42), format!("sandcache-admin.v1.42.{}", mac.to_hex()));
        assert!(Key::from_hex("abc").unwrap_err().contains("64 hex digits"));
        assert_eq!(format!("{master:?}"), "Key(***)");
    }
}
