//! The `/sandbox` namespace: every path that any reader could take for one
//! under `/sandbox` is the runner's, never the worker's.
//!
//! A request path is read the ways a proxy or the worker's framework might
//! read it, and it is the runner's if any reading starts with the segment
//! `sandbox`:
//! - percent-escapes decoded, again and again (a double-encoded `%2573` is
//!   `s` to a server that decodes twice);
//! - `\` taken for `/` (WHATWG URLs, which Deno's `new URL` follows, do);
//! - ASCII case folded;
//! - empty segments dropped (`//sandbox`, `/sandbox//status`);
//! - with and without dot segments resolved (`/x/../sandbox`, and
//!   `/sandbox/../x`, which a router that does not resolve them still
//!   matches by its first segment);
//! - a segment's `;parameters` dropped (servlet-style routers do).

/// Whether `path` (the raw request path, before any decoding) belongs to
/// the runner's `/sandbox` namespace.
pub fn is_admin(path: &str) -> bool {
    let decoded = decode_fully(path.as_bytes());
    let folded: Vec<u8> = decoded.iter().map(|&b| if b == b'\\' { b'/' } else { b.to_ascii_lowercase() }).collect();
    let segments: Vec<&[u8]> = folded
        .split(|&b| b == b'/')
        .map(|s| s.split(|&b| b == b';').next().unwrap_or_default())
        .filter(|s| !s.is_empty())
        .collect();
    let first_is_sandbox = |segs: &[&[u8]]| segs.first().is_some_and(|s| *s == b"sandbox");
    first_is_sandbox(&segments) || first_is_sandbox(&resolve_dots(&segments))
}

/// Percent-decodes until nothing changes (at most 8 rounds: any more is
/// itself suspicious, and the last reading is used).
fn decode_fully(raw: &[u8]) -> Vec<u8> {
    let mut cur = raw.to_vec();
    for _ in 0..8 {
        let next = percent_decode(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// RFC 3986 dot-segment removal over non-empty segments.
fn resolve_dots<'a>(segments: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for s in segments {
        match *s {
            b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reading_of_sandbox_is_the_runners() {
        for p in [
            "/sandbox",
            "/sandbox/",
            "/sandbox/status",
            "/sandbox/status/",
            "/sandbox/deploy/",
            "/Sandbox/status",
            "/SANDBOX/DEPLOY",
            "/sandbox/logs",
            "//sandbox/status",
            "/sandbox//status",
            "/sandbox/%73tatus",
            "/%73andbox/status",
            "/%2573andbox/status",
            "/%2fsandbox/status",
            "/sandbox%2fstatus",
            "/sandbox\\status",
            "/%5csandbox/status",
            "/./sandbox/status",
            "/x/../sandbox/status",
            "/x/%2e%2e/sandbox/status",
            "/sandbox/../status",
            "/sandbox;jsessionid=1/status",
            "/sandbox/cache/snapshot",
        ] {
            assert!(is_admin(p), "{p}");
        }
    }

    #[test]
    fn the_sites_own_paths_are_not() {
        for p in ["/", "/sandboxes", "/sandbox-x/status", "/api/sandbox/status", "/x/sandbox", "/%", "/%zz", "/sandbo"]
        {
            assert!(!is_admin(p), "{p}");
        }
    }
}
