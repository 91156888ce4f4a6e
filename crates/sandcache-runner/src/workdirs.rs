//! The dirs a deploy uses besides the cache dir's content: the runner's
//! state dir, the worker's fresh HOME and TMPDIR, the work dir; how each is
//! made, handed to the worker, and emptied.

use std::path::{Path, PathBuf};

use crate::config::RunnerConfig;
use crate::error::DeployError;
use crate::isolation::WorkerUser;

/// The cache's lock, state and index: the runner's, never the worker's.
pub(crate) fn cache_state_dir(cfg: &RunnerConfig) -> PathBuf {
    cfg.state_dir.join("cache")
}

/// The state dir (0711: the worker may pass through to its home, not
/// list or write) and a fresh, empty HOME and TMPDIR owned by the
/// worker, under `worker/`. Returns `worker/`.
pub(crate) fn prepare_worker_home(cfg: &RunnerConfig, user: WorkerUser) -> Result<PathBuf, String> {
    prepare_state_dir(cfg)?;
    let base = cfg.state_dir.join("worker");
    remove_dir(&base).map_err(|e| format!("cleaning {}: {e}", base.display()))?;
    private_dir(&base, 0o711)?;
    for sub in ["home", "tmp"] {
        let d = base.join(sub);
        std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        give_to(&d, user)?;
    }
    Ok(base)
}

/// The state dir (0711) and the cache's bookkeeping in it (0700).
pub(crate) fn prepare_state_dir(cfg: &RunnerConfig) -> Result<(), String> {
    private_dir(&cfg.state_dir, 0o711)?;
    private_dir(&cache_state_dir(cfg), 0o700)
}

/// Empties the cache dir (moved aside, removed in the background).
pub(crate) async fn clear(cfg: &RunnerConfig, dir: &Path) -> Result<(), DeployError> {
    let state = cache_state_dir(cfg);
    sandcache_engine::clear_dir(dir, Some(&state), cfg.restore_timeout)
        .await
        .map_err(|e| DeployError::Failed(format!("emptying {}: {e}", dir.display())))
}

/// Gives `path` itself (not what is under it) to the worker.
pub(crate) fn give_to(path: &Path, user: WorkerUser) -> Result<(), String> {
    if !user.is_separate() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("giving {} to the worker ({user}): {e}", path.display()))
}

/// Creates `dir` (and its parents) if missing with `mode`; an existing one
/// must be the runner's and closed to others' writes.
fn private_dir(dir: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    // Ours (an emptyDir mount is ours and 0777 until this chmod), and then
    // closed to others' writes.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(format!(
            "{} must be a directory owned by the runner (uid {me}); it is owned by uid {}",
            dir.display(),
            meta.uid()
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Removes `p` and what is under it; one already gone is fine.
pub(crate) fn remove_dir(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
