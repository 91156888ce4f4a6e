//! Who may call the admin plane: the credentials it accepts.

use axum::http::{HeaderMap, HeaderValue, header};

use super::token::{self, Key};

/// How the admin plane is guarded. Without a token and a key, only peers
/// on this host that are not the worker get in (and, with
/// `remote_without_token`, peers on other hosts).
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    /// A static bearer token: the fleet's, or one this pod alone holds.
    pub token: Option<String>,
    /// This pod's key: short-lived tokens made with it get in
    /// ([`token`](super::token)).
    pub pod_key: Option<Key>,
    /// Without a token or a key, let in peers on other hosts too (the
    /// explicit `--admin-without-token` of a runner listening beyond
    /// loopback). Never the worker, nor a local peer that cannot be
    /// named.
    pub remote_without_token: bool,
}

/// What a request presents.
pub(super) enum Presented {
    Valid,
    Missing,
    Wrong(&'static str),
}

impl AdminAuth {
    /// A token or a key is configured: every admin request needs one.
    pub fn requires_credential(&self) -> bool {
        self.token.is_some() || self.pod_key.is_some()
    }

    /// What `headers` present. With nothing configured, an `Authorization`
    /// header is not ours to judge (the peer check alone decides).
    pub(super) fn presented(&self, headers: &HeaderMap) -> Presented {
        if !self.requires_credential() {
            return Presented::Missing;
        }
        let mut seen = false;
        for value in headers.get_all(header::AUTHORIZATION) {
            let Some(given) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else { continue };
            seen = true;
            let given = given.trim();
            if self.token.as_deref().is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes())) {
                return Presented::Valid;
            }
            if let Some(key) = &self.pod_key {
                match key.verify(given, token::unix_now()) {
                    Ok(()) => return Presented::Valid,
                    Err(why) if given.starts_with(token::PREFIX) => return Presented::Wrong(why),
                    Err(_) => {}
                }
            }
        }
        if seen { Presented::Wrong("wrong bearer token") } else { Presented::Missing }
    }

    /// Whether an `Authorization` value carries an admin credential: this
    /// runner's token, or a token of the per-pod scheme made for any pod.
    /// The proxy removes such values; every other one reaches the worker.
    pub fn is_credential(&self, value: &HeaderValue) -> bool {
        let v = value.as_bytes();
        let scheme_end = v.iter().position(|&b| b == b' ').unwrap_or(0);
        let cred = if v[..scheme_end].eq_ignore_ascii_case(b"bearer") { &v[scheme_end..] } else { v }.trim_ascii();
        cred.starts_with(token::PREFIX.as_bytes())
            || self.token.as_deref().is_some_and(|t| constant_time_eq(cred, t.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_in_any_authorization_form() {
        let key = Key::from_hex(&"22".repeat(32)).unwrap();
        let auth = AdminAuth { token: Some("s3cret".into()), pod_key: Some(key.clone()), ..Default::default() };
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        for cred in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", "s3cret", "Bearer sandcache-admin.v1.1.ab"] {
            assert!(auth.is_credential(&v(cred)), "{cred}");
        }
        for site in ["Bearer s3cre", "Basic dXNlcjpwYXNz", "Bearer site-token", "s3cret2"] {
            assert!(!auth.is_credential(&v(site)), "{site}");
        }
        let other_pod = Key::from_hex(&"33".repeat(32)).unwrap().mint(token::unix_now() + 60);
        assert!(AdminAuth::default().is_credential(&v(&format!("Bearer {other_pod}"))));
    }

    #[test]
    fn a_valid_short_lived_token_is_accepted_and_a_stale_one_named() {
        let key = Key::from_hex(&"22".repeat(32)).unwrap();
        let auth = AdminAuth { pod_key: Some(key.clone()), ..Default::default() };
        let headers = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
            h
        };
        assert!(matches!(auth.presented(&headers(&key.mint(token::unix_now() + 60))), Presented::Valid));
        assert!(matches!(auth.presented(&headers(&key.mint(1))), Presented::Wrong("token expired")));
        assert!(matches!(auth.presented(&headers("nope")), Presented::Wrong("wrong bearer token")));
        assert!(matches!(auth.presented(&HeaderMap::new()), Presented::Missing));
    }
}
