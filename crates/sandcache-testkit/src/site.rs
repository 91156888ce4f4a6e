//! A site's repository: a local git repo of a few files, cloned by the
//! runner as it would clone a real site's remote one.
//!
//! ```no_run
//! # let dir = std::path::Path::new("/tmp/repo");
//! let repo = sandcache_testkit::site::repo(dir, &[("main.ts", "console.log(1);")], None);
//! let url = repo.url();
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git repo on disk, on branch `main`.
#[derive(Debug, Clone)]
pub struct Repo {
    dir: PathBuf,
}

/// A repo at `dir` holding `files`, committed once; given to `uid` (and
/// its group of the same number) when there is one, as git refuses a local
/// repo another uid owns.
pub fn repo(dir: &Path, files: &[(&str, &str)], uid: Option<u32>) -> Repo {
    let repo = Repo::init(dir);
    repo.write(files);
    repo.commit("site");
    if let Some(uid) = uid {
        repo.chown(uid);
    }
    repo
}

impl Repo {
    /// `git init` on branch `main` in `dir`, made if missing.
    pub fn init(dir: &Path) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = Repo { dir: dir.to_owned() };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// Writes `files` (relative path, content), not yet committed.
    pub fn write(&self, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = self.dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    /// Commits everything in the work tree (additions and removals).
    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message]);
    }

    /// Runs git in the repo; fails the test, with git's stderr, if git fails.
    pub fn git(&self, args: &[&str]) {
        let out = Command::new("git").args(args).current_dir(&self.dir).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `chown -R uid:uid`.
    pub fn chown(&self, uid: u32) {
        let out = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `file://` and the path: what a deploy names.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}
