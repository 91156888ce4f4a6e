//! Keeping the worker (someone else's code) away from the runner: the uid it
//! runs as, a non-dumpable runner, who is on the other end of an admin
//! request, the secret files it must not read, and every process it leaves.
//!
//! See `docs/threat-model.md` for what each piece stops and what is left.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

pub mod peer;

pub use peer::{Attribution, Peer};

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

/// Makes the runner non-dumpable: `/proc/<runner>/environ`, `mem`, `fd/*`
/// and ptrace are closed to every other process of the same uid (root
/// still sees them). Call first thing in the daemon.
pub fn make_non_dumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(io::Error::from)
}

/// Orphaned descendants (a worker's `setsid` + double fork) are re-parented
/// to the runner, where [`sweep`] finds and reaps them.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

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

/// One process, as `/proc/<pid>/status` shows it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: u32,
    ppid: u32,
    uid: u32,
    zombie: bool,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
        let ppid = field("PPid:")?.parse().ok()?;
        let zombie = field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X'));
        Some(Proc { pid, ppid, uid, zombie })
    })
    .collect()
}

/// Whether `pid` descends from `ancestor` (and is not it).
fn descends_from(all: &[Proc], pid: u32, ancestor: u32) -> bool {
    let mut cur = pid;
    for _ in 0..4096 {
        let Some(p) = all.iter().find(|p| p.pid == cur) else { return false };
        if p.ppid == ancestor {
            return true;
        }
        if p.ppid <= 1 {
            return false;
        }
        cur = p.ppid;
    }
    false
}

/// Which processes a sweep kills.
#[derive(Debug, Clone, Copy)]
pub struct SweepScope {
    /// Every process of this uid (a uid that only workers use).
    pub uid: Option<u32>,
    /// Every descendant of the runner (with a subreaper runner, orphans of
    /// the worker are among them).
    pub descendants: bool,
}

/// Kills every process in scope and reaps those that are the runner's
/// children, round after round until one finds none (a process that
/// forks while being killed is caught in the next round). Returns how many
/// were killed.
pub fn sweep(scope: SweepScope, within: Duration) -> usize {
    let me = std::process::id();
    let deadline = Instant::now() + within;
    let mut killed = 0;
    loop {
        let all = processes();
        let targets: Vec<Proc> = all
            .iter()
            .filter(|p| p.pid != me && !p.zombie)
            .filter(|p| scope.uid.is_some_and(|u| p.uid == u) || (scope.descendants && descends_from(&all, p.pid, me)))
            .copied()
            .collect();
        for p in &targets {
            if let Some(pid) = Pid::from_raw(p.pid as i32) {
                if rustix::process::kill_process(pid, Signal::KILL).is_ok() {
                    killed += 1;
                }
            }
        }
        reap_killed(&all, scope);
        if targets.is_empty() || Instant::now() >= deadline {
            if !targets.is_empty() {
                tracing::warn!(target: "sandbox", "{} worker processes were still alive after {within:?}", targets.len());
            }
            return killed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps zombies that are the runner's own children and in scope (orphans
/// re-parented to a subreaper runner): nobody else waits for them.
fn reap_killed(all: &[Proc], scope: SweepScope) {
    let me = std::process::id();
    for p in all.iter().filter(|p| p.ppid == me) {
        if scope.uid.is_some_and(|u| p.uid == u) || scope.descendants {
            if let Some(pid) = Pid::from_raw(p.pid as i32) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// The cloud credential and metadata endpoints: EC2 instance metadata, the
/// EKS Pod Identity agent (IPv4 and IPv6), and ECS's task endpoint.
pub const CREDENTIAL_ENDPOINTS_V4: &[&str] = &["169.254.169.254", "169.254.170.23", "169.254.170.2"];
pub const CREDENTIAL_ENDPOINTS_V6: &[&str] = &["fd00:ec2::254", "fd00:ec2::23"];

/// Adds (once) iptables and ip6tables rules rejecting every connection
/// from `uid` to the credential endpoints. Needs CAP_NET_ADMIN and the
/// iptables binaries; the same rules an init container adds.
pub fn block_metadata(uid: u32) -> Result<(), String> {
    if uid == rustix::process::getuid().as_raw() {
        return Err(format!(
            "the worker shares the runner's uid {uid}: blocking it would block the runner's own credentials"
        ));
    }
    for (tool, addrs, reject) in [
        ("iptables", CREDENTIAL_ENDPOINTS_V4, "icmp-port-unreachable"),
        ("ip6tables", CREDENTIAL_ENDPOINTS_V6, "icmp6-port-unreachable"),
    ] {
        for addr in addrs {
            let rule = [
                "OUTPUT",
                "-d",
                addr,
                "-m",
                "owner",
                "--uid-owner",
                &uid.to_string(),
                "-j",
                "REJECT",
                "--reject-with",
                reject,
            ];
            let run = |op: &str| {
                std::process::Command::new(tool)
                    .arg("-w")
                    .arg(op)
                    .args(rule)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {tool}: {e}"))
            };
            if run("-C")?.status.success() {
                continue;
            }
            let out = run("-I")?;
            if !out.status.success() {
                return Err(format!("{tool} -I {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
    }
    tracing::info!(target: "sandbox", "credential endpoints rejected for uid {uid} (iptables, ip6tables)");
    Ok(())
}

/// Children the runner waits for itself (the worker, git): the orphan
/// reaper leaves them to their own `wait`.
static OWN_CHILDREN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Marks `pid` as a child the runner waits for itself, until the returned
/// guard is dropped.
pub(crate) fn own_child(pid: Option<u32>) -> OwnChild {
    if let Some(pid) = pid {
        OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
    }
    OwnChild(pid)
}

#[derive(Debug)]
pub(crate) struct OwnChild(Option<u32>);

impl Drop for OwnChild {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
    }
}

/// Reaps every exited child of the runner that nobody else waits for: the
/// orphans a child subreaper (or PID 1) adopts. Returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let zombies: Vec<u32> = processes().into_iter().filter(|p| p.ppid == me && p.zombie).map(|p| p.pid).collect();
    let own = OWN_CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reaped = 0;
    for pid in zombies.into_iter().filter(|p| !own.contains(p)) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            if matches!(rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG), Ok(Some(_))) {
                reaped += 1;
            }
        }
    }
    reaped
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
