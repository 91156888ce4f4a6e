//! What the worker could still reach, said once at startup: the secret
//! files it could read, the dirs it could write, the admin API's policy.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::user::{DEFAULT_WORKER_UID, WorkerUser};
use crate::admin::AdminAuth;

/// Whether `uid` (with primary group `gid` and no other groups) could open
/// `path` for reading: the file's read bit for its class, and search on
/// every directory above it. Root reads everything.
pub fn readable_by(path: &Path, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let allowed = |m: &fs::Metadata, bit: u32| class_bits(m, uid, gid) & bit != 0;
    let Ok(meta) = fs::metadata(path) else { return false };
    if !allowed(&meta, 0o4) {
        return false;
    }
    let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    real.ancestors().skip(1).all(|dir| fs::metadata(dir).is_ok_and(|m| allowed(&m, 0o1)))
}

/// The `rwx` bits that apply to `uid` (primary group `gid`, no others) on
/// a file: its owner's, its group's or everyone else's.
fn class_bits(m: &fs::Metadata, uid: u32, gid: u32) -> u32 {
    let shift = if m.uid() == uid {
        6
    } else if m.gid() == gid {
        3
    } else {
        0
    };
    (m.mode() >> shift) & 0o7
}

/// Whether `uid` could create or rename entries in `dir` (write and search
/// on it; in a sticky dir such as /tmp, only if it owns the dir, since it
/// could then rename only its own entries).
pub fn writable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    let Ok(m) = fs::metadata(dir) else { return false };
    class_bits(&m, uid, gid) & 0o3 == 0o3 && (m.mode() & 0o1000 == 0 || m.uid() == uid)
}

/// The secret files the runner may read, from its environment: credential
/// token files, the admin token file and the admin key file.
pub fn secret_files(env: &[(String, String)]) -> Vec<PathBuf> {
    const VARS: &[&str] = &[
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "SANDCACHE_ADMIN_TOKEN_FILE",
        "SANDCACHE_ADMIN_KEY_FILE",
    ];
    let mut files: Vec<PathBuf> = env
        .iter()
        .filter(|(k, v)| VARS.contains(&k.as_str()) && !v.is_empty())
        .map(|(_, v)| PathBuf::from(v))
        .collect();
    if !env.iter().any(|(k, _)| k == "AWS_SHARED_CREDENTIALS_FILE") {
        if let Some((_, home)) = env.iter().find(|(k, _)| k == "HOME") {
            files.push(Path::new(home).join(".aws/credentials"));
        }
    }
    files.retain(|f| f.exists());
    files
}

/// What the runner says once at startup about the worker's reach:
/// `(is_warning, line)`. `dirs` are the cache dir and the work dir,
/// whose parents the worker must not be able to write.
pub fn startup_report(
    user: WorkerUser,
    admin: &AdminAuth,
    runner_env: &[(String, String)],
    dirs: &[&Path],
) -> Vec<(bool, String)> {
    let mut lines = Vec::new();
    if user.is_root() {
        lines.push((
            true,
            "the worker runs as root (--worker-user root): it can read the runner's credentials, token files \
             and /proc, reach the credential endpoints and write any site's cache"
                .to_owned(),
        ));
    } else if !user.is_separate() {
        lines.push((
            true,
            format!(
                "the runner is not root, so the worker runs as the runner's own uid {}: it can read every file \
                 the runner can (token files, ~/.aws), reach the credential endpoints, and signal the runner. \
                 /proc/<runner> is closed (the runner is non-dumpable) and the worker's environment holds no \
                 credentials. Run as root (the worker then gets uid {}) for a real boundary",
                user.uid, DEFAULT_WORKER_UID
            ),
        ));
    } else {
        lines.push((false, format!("the worker runs as {user}, with no supplementary groups")));
    }
    let who = if user.is_separate() {
        format!("the worker (any socket uid {} created)", user.uid)
    } else {
        format!("the worker (uid {}, sockets held by the runner's descendants)", user.uid)
    };
    if admin.requires_credential() {
        lines.push((false, format!("admin API: a bearer token is required, and {who} is refused even with one")));
    } else if admin.remote_without_token {
        lines.push((
            true,
            format!(
                "admin API: no token (--admin-without-token): any peer on another host may deploy, snapshot \
                 and undeploy; {who} and local peers that cannot be named are refused"
            ),
        ));
    } else {
        lines.push((
            false,
            format!("admin API: no token: only local peers get in; {who} and peers that cannot be named are refused"),
        ));
    }
    if !user.is_root() {
        for f in secret_files(runner_env) {
            if readable_by(&f, user.uid, user.gid) && user.is_separate() {
                lines.push((
                    true,
                    format!(
                        "{} is readable by the worker (uid {}): mount it 0400 (or 0440 with a group the worker \
                         is not in), owned by the runner",
                        f.display(),
                        user.uid
                    ),
                ));
            }
        }
        if user.is_separate() {
            for dir in dirs {
                let parent = dir.parent().unwrap_or(Path::new("/"));
                if writable_by(parent, user.uid, user.gid) {
                    lines.push((
                        true,
                        format!(
                            "{} is writable by the worker, which could put a symlink in place of {}",
                            parent.display(),
                            dir.display()
                        ),
                    ));
                }
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readability_follows_modes_and_directories() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let f = tmp.path().join("token");
        fs::write(&f, "t").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let me = WorkerUser::current();
        let other = me.uid.wrapping_add(4242);
        assert!(readable_by(&f, other, other));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!readable_by(&f, other, other));
        assert!(readable_by(&f, me.uid, me.gid) || me.uid == 0);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!readable_by(&f, other, other), "a closed directory above closes the file");
        assert!(!writable_by(tmp.path(), other, other));
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(writable_by(tmp.path(), other, other));
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(!writable_by(tmp.path(), other, other), "sticky: it could rename only its own entries");
    }
}
