//! `sandcache serve` as a child process, as the CLI's tests run it: on a
//! free loopback port, its dirs under one test dir, its output in a log,
//! started once it listens and stopped with SIGTERM.
//!
//! The testkit does not know where the binary is: the caller names it
//! (`env!("CARGO_BIN_EXE_sandcache")`), or gives a [`Command`] that runs
//! it (with its environment cleaned, or through `unshare`).
//!
//! ```no_run
//! # let tmp = std::path::Path::new("/tmp/t");
//! use sandcache_testkit::serve::Serve;
//! let serve = Serve::new("target/debug/sandcache", tmp).args(["--settle", "1"]).env("SANDCACHE_LOG", "debug").start();
//! // ... requests to 127.0.0.1:{serve.port} ...
//! let log = serve.stop();
//! ```

use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{self, Request};

/// How to start `sandcache serve`.
#[derive(Debug)]
pub struct Serve {
    cmd: Command,
    root: PathBuf,
    host: String,
    stop_grace: u32,
    dir: PathBuf,
    work_dir: PathBuf,
    state_dir: PathBuf,
    worker_user: Option<u32>,
    args: Vec<OsString>,
    log: Option<PathBuf>,
}

impl Serve {
    /// `bin serve`, with `--dir`, `--work-dir` and `--state-dir` at
    /// `deno-dir`, `site` and `state` under `root`.
    pub fn new(bin: impl AsRef<OsStr>, root: &Path) -> Serve {
        Serve::command(Command::new(bin), root)
    }

    /// `cmd serve`: `cmd` runs the binary, with its own environment and
    /// arguments before `serve` (a wrapper such as `unshare` ending with
    /// the binary's path).
    pub fn command(cmd: Command, root: &Path) -> Serve {
        Serve {
            cmd,
            root: root.to_owned(),
            host: "127.0.0.1".into(),
            stop_grace: 2,
            dir: root.join("deno-dir"),
            work_dir: root.join("site"),
            state_dir: root.join("state"),
            worker_user: None,
            args: Vec::new(),
            log: None,
        }
    }

    /// Listens on `host` (`[::]` for every address; default `127.0.0.1`).
    pub fn host(mut self, host: &str) -> Serve {
        self.host = host.to_owned();
        self
    }

    /// `--stop-grace` (default 2 s).
    pub fn stop_grace(mut self, secs: u32) -> Serve {
        self.stop_grace = secs;
        self
    }

    /// `--work-dir` elsewhere than `root/site`.
    pub fn work_dir(mut self, dir: &Path) -> Serve {
        self.work_dir = dir.to_owned();
        self
    }

    /// `--worker-user uid`: the worker runs as that uid (needs root).
    pub fn worker_user(mut self, uid: u32) -> Serve {
        self.worker_user = Some(uid);
        self
    }

    /// More arguments, after the dirs.
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Serve {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Serve {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Serve {
        self.cmd.env_remove(key);
        self
    }

    /// Standard output to `path`, standard error beside it with the
    /// extension `err` (default: `serve-<port>.log` under the root).
    pub fn log(mut self, path: &Path) -> Serve {
        self.log = Some(path.to_owned());
        self
    }

    /// Starts it on a free port and waits (20 s at most) until it answers
    /// `GET /deco/_liveness`; fails the test, with its log, if it exits
    /// first.
    pub fn start(mut self) -> ServeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = self.log.take().unwrap_or_else(|| self.root.join(format!("serve-{port}.log")));
        let cmd = &mut self.cmd;
        cmd.args(["serve", "--listen", &format!("{}:{port}", self.host), "--stop-grace"])
            .arg(self.stop_grace.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--work-dir")
            .arg(&self.work_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(uid) = self.worker_user {
            cmd.arg("--worker-user").arg(uid.to_string());
        }
        cmd.args(&self.args)
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(fs::File::create(log.with_extension("err")).unwrap()));
        let child = cmd.spawn().unwrap();
        let mut serve = ServeProcess { child: Some(child), port, log };
        let start = Instant::now();
        let liveness = Request::new("GET", "/deco/_liveness").timeout(Duration::from_secs(60));
        while http::send_blocking(serve.addr(), &liveness).is_err() {
            if let Some(status) = serve.child().try_wait().unwrap() {
                panic!("serve exited ({status}) before it listened:\n{}", serve.logs());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "serve never listened:\n{}", serve.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }
}

/// A running `sandcache serve`. Dropped, it is killed (SIGKILL), unless
/// [`ServeProcess::into_child`] took it.
#[derive(Debug)]
pub struct ServeProcess {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    log: PathBuf,
}

impl ServeProcess {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("a child until into_child")
    }

    /// The process, no longer killed when dropped.
    pub fn into_child(mut self) -> Child {
        self.child.take().expect("a child until into_child")
    }

    /// Its standard output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it printed so far: standard output, then standard error.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
    }

    /// Sends SIGTERM, and nothing else.
    pub fn term(&mut self) {
        term(self.child());
    }

    /// SIGTERM; it must exit 0. Returns everything it printed.
    pub fn stop(mut self) -> String {
        self.term();
        assert!(self.child().wait().unwrap().success());
        self.logs()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
    }
}

/// SIGTERM to `child`.
pub fn term(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

/// Waits for `child` to exit, at most `within`: its status and how long it
/// took.
pub fn wait_exit(child: &mut Child, within: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        assert!(start.elapsed() < within, "serve did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
