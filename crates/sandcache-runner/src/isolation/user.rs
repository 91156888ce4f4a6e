//! Who the worker runs as.

use std::fs;

/// The worker's default uid and gid when the runner is root: fixed, so an
/// image, file modes and the credential-endpoint rules can name it.
pub const DEFAULT_WORKER_UID: u32 = 10001;
pub const DEFAULT_WORKER_GID: u32 = 10001;

/// Who the worker runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerUser {
    pub uid: u32,
    pub gid: u32,
}

impl WorkerUser {
    /// The documented default: `10001:10001`.
    pub const DEFAULT: WorkerUser = WorkerUser { uid: DEFAULT_WORKER_UID, gid: DEFAULT_WORKER_GID };

    /// The runner's own uid and gid.
    pub fn current() -> WorkerUser {
        WorkerUser { uid: rustix::process::getuid().as_raw(), gid: rustix::process::getgid().as_raw() }
    }

    /// `USER`, `UID` or either with `:GID`. A name is looked up in
    /// `/etc/passwd` (its primary group is the default gid); a bare uid
    /// that no entry names uses the same number as its gid.
    pub fn parse(spec: &str) -> Result<WorkerUser, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let bad = || format!("worker user `{spec}`: expected USER, UID or UID:GID");
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(bad());
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let entry = |pred: &dyn Fn(&str, u32) -> bool| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let (uid, gid) = (f.get(2)?.parse::<u32>().ok()?, f.get(3)?.parse::<u32>().ok()?);
                pred(f[0], uid).then_some((uid, gid))
            })
        };
        let (uid, default_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, entry(&|_, u| u == uid).map_or(uid, |(_, g)| g)),
            Err(_) if user == "root" => (0, 0),
            Err(_) => entry(&|name, _| name == user)
                .ok_or_else(|| format!("worker user `{user}` is not in /etc/passwd; give a numeric UID[:GID]"))?,
        };
        let gid = match group {
            None => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
                    groups
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.first() == Some(&g)).then(|| f.get(2)?.parse::<u32>().ok()).flatten()
                        })
                        .ok_or_else(|| format!("worker group `{g}` is not in /etc/group; give a numeric GID"))?
                }
            },
        };
        Ok(WorkerUser { uid, gid })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The worker has a uid of its own, distinct from the runner's.
    pub fn is_separate(&self) -> bool {
        self.uid != rustix::process::getuid().as_raw()
    }
}

impl std::fmt::Display for WorkerUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_users_parse() {
        assert_eq!(WorkerUser::parse("root").unwrap(), WorkerUser { uid: 0, gid: 0 });
        assert_eq!(WorkerUser::parse("0").unwrap(), WorkerUser { uid: 0, gid: 0 });
        assert_eq!(WorkerUser::parse("4242:77").unwrap(), WorkerUser { uid: 4242, gid: 77 });
        assert_eq!(WorkerUser::parse("54321").unwrap(), WorkerUser { uid: 54321, gid: 54321 });
        assert_eq!(WorkerUser::parse("nobody").unwrap().uid, 65534);
        for bad in ["", ":", "1:", ":1", "no-such-user-here"] {
            assert!(WorkerUser::parse(bad).is_err(), "{bad}");
        }
    }
}
