//! Starting the children the runner waits for itself (git, the worker):
//! marked its own as they start, off the async threads, without a copy of
//! the runner's memory where std can, and as the worker's uid.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::WorkerUser;
use super::reaper::{OwnChild, spawn_marked};

/// Starts `program` as a child the runner waits for itself, as `user`
/// when given (its uid and gid, no supplementary groups; `None`: the
/// runner's own), with what `configure` sets on its command (arguments,
/// environment, stdio...), and marks it as it starts ([`spawn_marked`]):
/// the orphan reaper could otherwise take a child that exits at once (and
/// its status and output with it). It is looked up in `path`, the child's
/// `PATH`, as `execvp` would as that user.
///
/// The spawn runs on the blocking pool, and without a fork where it can:
/// - A fork copies the runner's page tables, and the child's exec then
///   tears them down: 6-20 ms of a core at 100-370 MB of RSS, and every
///   page the runner writes afterwards faults once. In a pre-warmed deploy
///   that was 10-25 ms of CPU on a 2-core pod whose every core the delta
///   needed. `posix_spawn` shares the memory until the exec instead, and
///   std uses it when the command sets no uid or gid and names its program
///   by path: so, as the runner's own user, a bare name is resolved here
///   ([`resolve`]).
/// - As the worker, std forks, and the child takes the worker's uid and
///   gid itself before its exec. Taking them on a thread of the runner
///   instead (they are per thread on Linux), which would let it spawn
///   without a fork, was tried and dropped: for as long as that thread
///   lives the worker's uid may signal it (`tgkill`), and a SIGKILL or
///   SIGSTOP to one thread kills or stops the whole runner.
/// - On an async thread the fork held up the task just spawned there (a
///   deploy's restore, beside the clone), which sits in that thread's
///   next-task slot where other workers do not steal it (it waited 20-24
///   ms).
pub(crate) async fn spawn_own(
    program: impl Into<OsString>,
    path: Option<String>,
    user: Option<WorkerUser>,
    configure: impl FnOnce(&mut tokio::process::Command) + Send + 'static,
) -> std::io::Result<(tokio::process::Child, OwnChild)> {
    let program = program.into();
    let spawn = move || {
        let mut cmd = match user {
            // std clears the supplementary groups when root drops to a
            // uid; the child's `execvp` looks the name up as the worker.
            Some(user) => {
                let mut cmd = tokio::process::Command::new(&program);
                cmd.uid(user.uid).gid(user.gid);
                cmd
            }
            None => match path.as_deref().and_then(|path| resolve(&program, path)) {
                Some(found) => {
                    let mut cmd = tokio::process::Command::new(found);
                    cmd.arg0(&program);
                    cmd
                }
                None => tokio::process::Command::new(&program),
            },
        };
        configure(&mut cmd);
        spawn_marked(|| cmd.spawn(), |child| child.id())
    };
    tokio::task::spawn_blocking(spawn).await.map_err(std::io::Error::other)?
}

/// `program` as `execvp` would find it in `path` (the child's `PATH`) for
/// the runner: a name with no `/` becomes the first regular file of that
/// name in a listed directory that it may execute. `None`: a path
/// already, or not found (the spawn then fails as it would have, naming
/// it).
fn resolve(program: &OsStr, path: &str) -> Option<PathBuf> {
    if program.is_empty() || program.as_bytes().contains(&b'/') {
        return None;
    }
    path.split(':').filter(|dir| dir.starts_with('/')).map(|dir| Path::new(dir).join(program)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file())
            && rustix::fs::access(candidate, rustix::fs::Access::EXEC_OK).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root: the child runs as the user, with no supplementary groups,
    /// and the runner (this process, this thread) is still root after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_started_as_the_worker_runs_as_it_and_the_runner_stays_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: starting a child as another user needs root");
            return;
        }
        // A directory the user cannot search comes first in its PATH: passed
        // over, as execvp would.
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(private.path().join("sh"), "#!/bin/sh\nexit 9\n").unwrap();
        std::fs::set_permissions(private.path().join("sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let user = WorkerUser { uid: 10001, gid: 10002 };
        let path = format!("{}:/usr/bin:/bin", private.path().display());
        let env_path = path.clone();
        let (child, _own) = spawn_own("sh", Some(path), Some(user), move |cmd| {
            cmd.args(["-c", "echo $(id -u) $(id -g) $(id -G); cat /proc/self/status | grep -E '^Cap(Eff|Prm)'"]);
            cmd.env_clear().env("PATH", env_path).stdout(std::process::Stdio::piped());
        })
        .await
        .unwrap();
        let out = child.wait_with_output().await.unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("10001 10002 10002"), "{out}");
        assert!(lines.all(|l| l.ends_with("0000000000000000")), "no capabilities: {out}");
        assert!(rustix::process::geteuid().is_root(), "this thread is still root");
        let all = std::thread::spawn(|| rustix::process::geteuid().is_root()).join().unwrap();
        assert!(all, "and a new one");
        // A program that is not there fails the spawn, naming it.
        let missing = spawn_own("sandcache-no-such-program", Some("/usr/bin:/bin".into()), Some(user), |cmd| {
            cmd.env_clear().env("PATH", "/usr/bin:/bin");
        })
        .await;
        assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn names_are_resolved_in_path_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap(); // not executable
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("relative:{}:{}", a.display(), b.display());
        assert_eq!(resolve(OsStr::new("tool"), &path), Some(b.join("tool")));
        assert_eq!(resolve(OsStr::new("missing"), &path), None);
        assert_eq!(resolve(OsStr::new("./tool"), &path), None, "a path is left as it is");
    }
}
