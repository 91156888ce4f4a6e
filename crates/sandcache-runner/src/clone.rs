//! The site's code: `git clone` as the worker into the work dir, with
//! none of the runner's environment but what git needs; and repo URLs,
//! which may carry a token, redacted for logs and replies.

use std::path::Path;

use crate::config::RunnerConfig;
use crate::error::DeployError;
use crate::isolation::kill::KillGroupOnDrop;
use crate::isolation::{WorkerUser, spawn_own};

/// `git clone` as the worker, into the (empty, worker-owned) work dir,
/// with none of the runner's environment but what git needs.
pub(crate) async fn clone_repo(
    cfg: &RunnerConfig,
    repo: &str,
    branch: Option<&str>,
    user: WorkerUser,
    home: &Path,
) -> Result<(), DeployError> {
    let path = cfg.runner_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let env: Vec<(String, String)> =
        cfg.runner_env.iter().filter(|(k, _)| GIT_ENV.contains(&k.as_str())).cloned().collect();
    let (repo_arg, branch_arg, work_dir, home) =
        (repo.to_owned(), branch.map(str::to_owned), cfg.work_dir.clone(), home.to_owned());
    let configure = move |cmd: &mut tokio::process::Command| {
        // No prompt, no hooks or templates, no system or global config, and
        // a transfer slower than 1 KB/s for 30 s is a failure.
        cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30"]);
        cmd.args(["clone", "--depth", "1", "--single-branch", "--quiet", "--template="]);
        if let Some(b) = branch_arg {
            cmd.args(["--branch", &b]);
        }
        cmd.arg("--").arg(repo_arg).arg(&work_dir);
        cmd.env_clear().envs(env);
        cmd.env("HOME", home.join("home")).env("TMPDIR", home.join("tmp")).env("GIT_TERMINAL_PROMPT", "0");
        cmd.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new");
        cmd.current_dir(&work_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
    };
    let (child, _waited_here) = spawn_own("git", path, user.is_separate().then_some(user), configure)
        .await
        .map_err(|e| DeployError::Failed(format!("cannot run git: {e}")))?;
    // git's helpers (git-remote-https) share its group: a timeout or a
    // cancelled deploy kills them all, not just git.
    let _group = KillGroupOnDrop::new(child.id());
    let out = match tokio::time::timeout(cfg.clone_timeout, child.wait_with_output()).await {
        Err(_) => {
            let secs = cfg.clone_timeout.as_secs_f32();
            return Err(DeployError::BadInput(format!("git clone of {} timed out after {secs} s", redact_url(repo))));
        }
        Ok(Err(e)) => return Err(DeployError::Failed(format!("cannot run git: {e}"))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // git's `fatal:` line says why; its last line is often a hint.
        let why = stderr
            .lines()
            .find(|l| l.starts_with("fatal:"))
            .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("unknown error")
            .trim();
        let mut message = format!("cannot clone {}: {}", redact_url(repo), redact_urls(why));
        if stderr.contains("dubious ownership") {
            let uid = if user.is_separate() { user.uid } else { rustix::process::geteuid().as_raw() };
            message.push_str(&dubious_ownership_hint(&stderr, uid));
        }
        return Err(DeployError::BadInput(message));
    }
    tracing::info!(target: "sandbox", "cloned {}{}", redact_url(repo), branch.map(|b| format!(" ({b})")).unwrap_or_default());
    Ok(())
}

/// What to do when the worker's git refuses a local repository another uid
/// owns ("dubious ownership"): git trusts only repositories its own user
/// owns, and the clone runs as the worker, with no global config where an
/// exception could be added.
fn dubious_ownership_hint(stderr: &str, uid: u32) -> String {
    // git: "detected dubious ownership in repository at '/srv/site/.git'".
    let path = stderr.split("repository at '").nth(1).and_then(|rest| rest.split('\'').next());
    let owner = path
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| format!(" (owned by uid {})", std::os::unix::fs::MetadataExt::uid(&m)))
        .unwrap_or_default();
    let what = path.map_or_else(|| "the repository".to_owned(), |p| p.to_owned());
    format!(
        ". The runner clones as the worker, uid {uid}, and git refuses a local repository another user owns: \
         {what}{owner}. Serve the repo over http(s), ssh or git://, or make it owned by uid {uid}."
    )
}

/// The runner environment git may see: where programs are, proxies and CA
/// certificates. Never credentials.
const GIT_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A URL with any `user:password@` part replaced: private repos are often
/// cloned with a token in the URL, which must not reach logs or replies.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/').map_or(rest, |(auth, _)| auth).rfind('@') {
            Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// [`redact_url`] applied to every URL-looking word of a message.
fn redact_urls(text: &str) -> String {
    text.split(' ').map(|w| if w.contains("://") { redact_url(w) } else { w.to_owned() }).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_repo_urls_are_redacted() {
        assert_eq!(redact_url("https://x-token:ghp_SECRET@github.com/o/r.git"), "https://***@github.com/o/r.git");
        assert_eq!(redact_url("https://github.com/o/r.git"), "https://github.com/o/r.git");
        assert_eq!(redact_url("file:///tmp/repo"), "file:///tmp/repo");
        assert_eq!(redact_url("https://github.com/o/r@v1"), "https://github.com/o/r@v1");
        let msg = redact_urls("fatal: repository 'https://u:ghp_SECRET@h/o/r/' not found");
        assert!(!msg.contains("ghp_SECRET"), "{msg}");
    }
}
