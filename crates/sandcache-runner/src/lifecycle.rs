//! The deploy lifecycle: restore → clone → legacy cache → worker → deps-ready
//! snapshot; and undeploy: stop → final snapshot → clean.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandcache_engine::{Cache, CacheConfig, RestoreOptions, seed_env};

use crate::clone::clone_repo;
use crate::deploy::DeployRequest;
use crate::error::DeployError;
use crate::isolation::WorkerUser;
use crate::legacy::LegacyCache;
use crate::runner::{Deployment, LastDeploy, Phase, Runner, TailWatch, lock};
use crate::workdirs::{self, give_to, remove_dir};
use crate::worker::{self, SpawnError, Worker};

impl Runner {
    /// Deploys a site. The lifecycle runs in its own task, so a client that
    /// hangs up cannot leave the runner half-deployed.
    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<String, DeployError> {
        {
            let mut phase = lock(&self.phase);
            match &*phase {
                Phase::Idle => {
                    // The clean slate (step 0) shows as the restore's.
                    let cancel = tokio::sync::watch::channel(false).0;
                    *phase = Phase::Deploying { site: req.site.clone(), cancel, step: "restoring" };
                }
                // The seed answers the same for deployed and deploying.
                _ => return Err(DeployError::Conflict("Already deployed".into())),
            }
        }
        // A pre-warm lets go of the dir first.
        self.prewarm.cancel().await;
        let mut cancelled = match &*lock(&self.phase) {
            Phase::Deploying { cancel, .. } => cancel.subscribe(),
            _ => unreachable!("set above"),
        };
        let this = self.clone();
        let site = req.site.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            // Cancelling drops the deploy where it is: a restore stops (its
            // staging removed), git's whole process group is killed.
            let result = tokio::select! {
                r = this.run_deploy(req) => r,
                _ = cancelled.wait_for(|c| *c) => Err(DeployError::Cancelled),
            };
            if result.is_err() {
                // Clean before going idle, so a next deploy's clone is safe,
                // and nothing a half-made deploy started survives.
                this.sweep().await;
                let _ = remove_dir(&this.cfg.work_dir);
            }
            let mut phase = lock(&this.phase);
            match result {
                Ok(d) => {
                    *phase = Phase::Deployed(d);
                    Ok(())
                }
                Err(e) => {
                    *phase = Phase::Idle;
                    Err(e)
                }
            }
        });
        let result = match task.await {
            Ok(Ok(())) => Ok(site),
            Ok(Err(e)) => {
                tracing::warn!(target: "sandbox", site = %site, "deploy of {site} failed: {e}");
                Err(e)
            }
            Err(e) => {
                *lock(&self.phase) = Phase::Idle;
                Err(DeployError::Failed(format!("deploy task failed: {e}")))
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(DeployError::Cancelled) => "cancelled",
            Err(_) => "error",
        };
        self.metrics.deployed(outcome, started.elapsed());
        if result.is_err() {
            // Idle again: the pod pre-warms again (emptying DENO_DIR first,
            // as it may hold what this deploy restored).
            self.start_prewarm();
        }
        lock(&self.history).deploy = Some(match &result {
            Ok(_) => LastDeploy { ok: true, outcome: None, error: None, at, ms },
            Err(e) => LastDeploy { ok: false, outcome: Some(outcome), error: Some(e.to_string()), at, ms },
        });
        result
    }

    /// Restores the deploy's cache into DENO_DIR and hands the dir to the
    /// worker, whatever the outcome; returns the cache for the snapshots.
    /// Hot-first, it returns at `hot-ready`, with the tail still landing.
    async fn restore_cache(
        self: &Arc<Self>,
        config: &CacheConfig,
        opts: &RestoreOptions,
        user: WorkerUser,
    ) -> Result<(Cache, Option<Arc<TailWatch>>), DeployError> {
        let cache = self.stores.cache(config);
        let mut tail = None;
        lock(&self.history).hot = None;
        if opts.hot_first && cache.is_enabled() {
            let mut handle = cache.restore_handle(&self.cfg.deno_dir, opts);
            match handle.hot_ready().await {
                Some(hot) => {
                    let hot_ms = hot.as_millis() as u64;
                    lock(&self.history).hot = Some((hot, true));
                    tracing::info!(target: "sandbox-cache", hot_ms, "hot-ready after {hot_ms}ms: starting the worker while the rest lands");
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        let o = handle.finish().await;
                        let tail_ms = o.elapsed.saturating_sub(hot).as_millis() as u64;
                        tracing::info!(target: "sandbox-cache", tail_ms, "restore tail over after {tail_ms}ms more");
                        this.metrics.restore_phases(hot, o.elapsed.saturating_sub(hot));
                        this.record(o);
                        lock(&this.history).hot = Some((hot, false));
                        let _ = tx.send(true);
                    });
                    tail = Some(Arc::new(TailWatch::new(rx, task.abort_handle())));
                }
                None => self.record(handle.finish().await),
            }
        } else {
            let outcome = cache.restore(&self.cfg.deno_dir, opts).await;
            self.record(outcome);
        }
        // Restored or not, the dir is the worker's: Deno adds modules to it.
        give_to(&self.cfg.deno_dir, user).map_err(DeployError::Failed)?;
        Ok((cache, tail))
    }

    /// A deploy's steps, in order; each logs what it did.
    async fn run_deploy(self: &Arc<Self>, req: DeployRequest) -> Result<Arc<Deployment>, DeployError> {
        let started = Instant::now();
        tracing::info!(target: "sandbox", site = %req.site, "deploying {}", req.site);
        // Old trees are not removed while this deploy restores and its
        // worker boots: that removal is never urgent, and on a 2-core pod
        // it would be on the first response's critical path.
        let paused = sandcache_engine::pause_removals();
        let user = self.worker_user();
        if user.is_root() {
            tracing::warn!(target: "sandbox", "the worker runs as root (--worker-user root): it can read the runner's credentials and write any site's cache");
        }
        let home = self.prepare(user).await?;
        let mut plan = self.cache_plan(&req, user);
        let (cache, tail) = self.restore_and_clone(&req, &mut plan, user, &home).await?;
        self.legacy_cache(&req, &plan.opts).await;
        let worker = self.start_worker(&req, user, &home, tail.as_ref()).await?;
        let deployment = Arc::new(Deployment {
            site: req.site.clone(),
            cache,
            worker,
            watcher: Mutex::new(None),
            tail,
            started,
            first_response: std::sync::OnceLock::new(),
        });

        // 6-7. Readiness, then the deps-ready snapshot, in the background.
        if let Some(w) = &deployment.worker {
            let (this, d) = (self.clone(), deployment.clone());
            let port = w.port;
            let handle = tokio::spawn(async move { this.after_ready(d, port, paused).await });
            *lock(&deployment.watcher) = Some(handle);
        }
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(target: "sandbox", site = %req.site, ms, "deployed {} in {ms}ms", req.site);
        Ok(deployment)
    }

    /// 0. Nothing of an earlier site survives: its processes, its cache
    ///    dir, its HOME. The restore can then race no one. Returns the
    ///    worker's fresh home (`worker/`, with `home` and `tmp`).
    async fn prepare(&self, user: WorkerUser) -> Result<PathBuf, DeployError> {
        self.sweep().await;
        let home = workdirs::prepare_worker_home(&self.cfg, user).map_err(DeployError::Failed)?;
        // A dir only pre-warms wrote since it was emptied is kept: the
        // restore then writes what this site adds to the base. From here
        // on it is this site's.
        if !self.prewarm.pristine() {
            workdirs::clear(&self.cfg, &self.cfg.deno_dir).await?;
        }
        self.prewarm.set_pristine(false);
        Ok(home)
    }

    /// 1. The cache config from the deploy's envs, over runner-wide
    ///    defaults, and the restore's options.
    fn cache_plan(&self, req: &DeployRequest, user: WorkerUser) -> CachePlan {
        let mut config = CacheConfig::from_envs(&req.envs.clone().into_iter().collect()).or(&self.cfg.cache_defaults);
        if config.store.is_some() && config.key.is_none() {
            config.key = Some(format!("{}/cache.tgz", req.site));
        }
        // Read-only bases: the deploy's own, then the runner's.
        let mut fallbacks = seed_env::fallbacks(req.envs.get(seed_env::FALLBACK_KEYS).map(String::as_str));
        for f in &self.cfg.fallbacks {
            if !fallbacks.contains(f) {
                fallbacks.push(f.clone());
            }
        }
        let opts = RestoreOptions {
            timeout: self.cfg.restore_timeout,
            limits: self.cfg.restore_limits,
            owner: user.is_separate().then_some((user.uid, user.gid)),
            state_dir: Some(workdirs::cache_state_dir(&self.cfg)),
            hot_first: self.cfg.hot_first,
            fallbacks,
            // A restore after the pre-warm (or another deploy's) reads
            // the generation the dir holds from memory.
            remember: true,
            ..Default::default()
        };
        CachePlan { config, opts }
    }

    /// 2. Restore, bounded, before anything reads the dir; 3. meanwhile,
    ///    the site's code, cloned as the worker into a dir it owns (the two
    ///    touch nothing in common). With `{lock}` the exact key needs the
    ///    clone: meanwhile the site's newest generation goes in, and the
    ///    exact key's restore after the clone (2') is a delta over it.
    async fn restore_and_clone(
        self: &Arc<Self>,
        req: &DeployRequest,
        plan: &mut CachePlan,
        user: WorkerUser,
        home: &Path,
    ) -> Result<(Cache, Option<Arc<TailWatch>>), DeployError> {
        let lock_templated = plan.lock_templated();
        self.set_step("restoring");
        // The status shows what is still running: the restore, then the
        // clone if it outlasts the restore.
        let cloned_yet = std::sync::atomic::AtomicBool::new(false);
        let started = Instant::now();
        let restore = async {
            let restored = match lock_templated {
                true => {
                    self.restore_provisionally(plan).await;
                    Ok(None)
                }
                false => self.restore_cache(&plan.config, &plan.opts, user).await.map(Some),
            };
            if !cloned_yet.load(std::sync::atomic::Ordering::SeqCst) {
                self.set_step("cloning");
            }
            restored
        };
        let clone = async {
            self.clone_site(req, user, home).await?;
            cloned_yet.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), DeployError>(())
        };
        let (restored, cloned) = tokio::join!(restore, clone);
        let cache = restored?;
        cloned?;
        match cache {
            Some(c) => Ok(c),
            None => {
                // One deadline for both steps (at least a second for this one).
                let left = self.cfg.restore_timeout.saturating_sub(started.elapsed());
                plan.opts.timeout = left.max(Duration::from_secs(1));
                self.restore_by_lock_key(plan, user).await
            }
        }
    }

    /// 2 (with `{lock}`), beside the clone: the site's newest generation
    /// under its key's prefix (else its fallbacks), so that the exact key's
    /// restore after the clone writes only what differs, usually nothing.
    /// Advisory and one phase; what it did is logged, not recorded.
    async fn restore_provisionally(&self, plan: &CachePlan) {
        let template = plan.config.key.clone().unwrap_or_default();
        let Some((prefix, _)) = template.rsplit_once('/') else { return };
        let mut config = plan.config.clone();
        config.key = Some(template.replace(LOCK_PLACEHOLDER, "nolock"));
        let mut opts = RestoreOptions { hot_first: false, ..plan.opts.clone() };
        opts.fallbacks.insert(0, format!("{prefix}/"));
        let outcome = self.stores.cache(&config).restore(&self.cfg.deno_dir, &opts).await;
        tracing::info!(target: "sandbox-cache", "beside the clone, the site's newest generation: {}", outcome.to_json());
    }

    /// 3. The work dir, emptied and given to the worker, and the repo
    ///    cloned into it.
    async fn clone_site(&self, req: &DeployRequest, user: WorkerUser, home: &Path) -> Result<(), DeployError> {
        let work = &self.cfg.work_dir;
        remove_dir(work).map_err(|e| DeployError::Failed(format!("cleaning {}: {e}", work.display())))?;
        std::fs::create_dir_all(work).map_err(|e| DeployError::Failed(format!("creating {}: {e}", work.display())))?;
        give_to(work, user).map_err(DeployError::Failed)?;
        if let Some(repo) = &req.repo {
            let cloned = Instant::now();
            clone_repo(&self.cfg, repo, req.branch.as_deref(), user, home).await?;
            tracing::info!(target: "sandbox", clone_ms = cloned.elapsed().as_millis() as u64, "cloned {repo}");
        }
        Ok(())
    }

    /// 2'. With `{lock}`: the exact key of the cloned repo's dependency
    ///     files, then the site's newest generation under its prefix, then
    ///     the deploy's and the runner's fallbacks.
    async fn restore_by_lock_key(
        self: &Arc<Self>,
        plan: &mut CachePlan,
        user: WorkerUser,
    ) -> Result<(Cache, Option<Arc<TailWatch>>), DeployError> {
        self.set_step("restoring");
        let template = plan.config.key.clone().unwrap_or_default();
        // Reading and parsing the repo's lockfiles is blocking work
        // (bounded by the lockfile caps): off the async threads.
        let repo = self.cfg.work_dir.clone();
        let key = match tokio::task::spawn_blocking(move || expand_lock_key(&template, &repo)).await {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(target: "sandbox", "the lockfile key failed ({e}); using `nolock`");
                plan.config.key.clone().unwrap_or_default().replace(LOCK_PLACEHOLDER, "nolock")
            }
        };
        if let Some((prefix, _)) = key.rsplit_once('/') {
            plan.opts.fallbacks.insert(0, format!("{prefix}/"));
        }
        plan.config.key = Some(key);
        self.restore_cache(&plan.config, &plan.opts, user).await
    }

    /// 4. The legacy build cache, when its keys are configured.
    async fn legacy_cache(&self, req: &DeployRequest, opts: &RestoreOptions) {
        self.set_step("legacy_cache");
        let mut legacy_vars = self.cfg.legacy_vars.clone();
        legacy_vars.extend(
            req.envs
                .iter()
                .filter(|(k, _)| crate::legacy::vars::ALL.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if let Some(legacy) = LegacyCache::from_vars(&legacy_vars) {
            let o = legacy.restore(&req.site, &self.cfg.store_options, opts).await;
            tracing::info!(target: "sandbox", "legacy build cache: {}", o.reason().map_or("restored", |r| r.as_str()));
        }
    }

    /// 5. The worker, if the deploy runs one, on a free port, as the
    ///    worker user, in its fresh home.
    async fn start_worker(
        &self,
        req: &DeployRequest,
        user: WorkerUser,
        home: &Path,
        tail: Option<&Arc<TailWatch>>,
    ) -> Result<Option<Worker>, DeployError> {
        self.set_step("starting");
        let Some(argv) = self.run_command(req) else {
            tracing::info!(target: "sandbox", "no runCommand: no worker");
            return Ok(None);
        };
        let port = worker::free_port().map_err(|e| DeployError::Failed(format!("no free port: {e}")))?;
        let mut env = worker::environment(self.cfg.runner_env.clone(), &req.envs, port, &self.cfg.deno_dir);
        env.insert("HOME".into(), home.join("home").display().to_string());
        env.insert("TMPDIR".into(), home.join("tmp").display().to_string());
        let spec = worker::Spec {
            argv: argv.clone(),
            cwd: self.cfg.work_dir.clone(),
            env,
            port,
            ready_timeout: self.cfg.port_timeout,
            user: user.is_separate().then_some(user),
        };
        let worker = Worker::spawn(spec, self.cfg.worker_restarts, self.metrics.clone(), tail.map(|t| t.watch()))
            .await
            .map_err(|e| {
                self.metrics.worker_failed();
                match e {
                    SpawnError::NotFound { .. } => DeployError::BadInput(e.to_string()),
                    SpawnError::Io { .. } => DeployError::Failed(format!(
                        "{e}: {}",
                        std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                    )),
                }
            })?;
        tracing::info!(target: "sandbox", "worker started on port {port} as {user}: {}", argv.join(" "));
        Ok(Some(worker))
    }

    fn run_command(&self, req: &DeployRequest) -> Option<Vec<String>> {
        match &req.run_command {
            Some(argv) if argv.is_empty() => None,
            Some(argv) => Some(argv.clone()),
            None => {
                let default = self.cfg.default_run_command.clone()?;
                let entry = self.cfg.work_dir.join(&self.cfg.default_entry);
                if entry.exists() {
                    Some(default)
                } else {
                    tracing::info!(target: "sandbox", "default run command skipped: {} is missing", entry.display());
                    None
                }
            }
        }
    }

    /// Undeploys: stop the worker (TERM, grace, KILL), take a bounded final
    /// snapshot if the cache changed, clean the work dir, back to idle.
    pub async fn undeploy(self: &Arc<Self>) -> Result<String, DeployError> {
        let d = {
            let mut phase = lock(&self.phase);
            match &*phase {
                Phase::Deployed(d) => {
                    let d = d.clone();
                    *phase = Phase::Undeploying { site: d.site.clone() };
                    Ok(d)
                }
                Phase::Idle => return Err(DeployError::Conflict("Not deployed".into())),
                Phase::Deploying { site, cancel, .. } => {
                    let _ = cancel.send(true);
                    Err(site.clone())
                }
                Phase::Undeploying { site } => {
                    return Err(DeployError::Conflict(format!("Undeploy of {site} in progress")));
                }
            }
        };
        let d = match d {
            Ok(d) => d,
            Err(site) => {
                // A deploy in progress is cancelled; answer once it has
                // cleaned up and gone idle.
                tracing::info!(target: "sandbox", "undeploy during the deploy of {site}: cancelling it");
                let start = Instant::now();
                loop {
                    match &*lock(&self.phase) {
                        Phase::Idle => return Ok(site),
                        // It finished just before the cancel: undeploy it.
                        Phase::Deployed(_) => break,
                        _ => {}
                    }
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(DeployError::Failed(format!("the deploy of {site} did not stop")));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Box::pin(self.undeploy()).await;
            }
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            if let Some(h) = lock(&d.watcher).take() {
                h.abort();
            }
            // A tail still landing stops first: it holds the dir's lock,
            // which the clean below needs (its marker keeps the final
            // snapshot from storing the partial tree).
            if let Some(tail) = &d.tail {
                tail.stop();
            }
            if let Some(w) = &d.worker {
                w.stop(this.cfg.stop_grace).await;
                tracing::info!(target: "sandbox", "worker stopped");
            }
            // Whatever it left running (setsid, double forks) goes too,
            // before the snapshot reads the dir it could still change.
            this.sweep().await;
            if d.cache.is_enabled() {
                this.final_snapshot(&d.cache).await;
            }
            // Nothing of this site reaches the next one.
            if let Err(e) = workdirs::clear(&this.cfg, &this.cfg.deno_dir).await {
                tracing::warn!(target: "sandbox", "{e}");
            }
            if let Err(e) = remove_dir(&this.cfg.work_dir) {
                tracing::warn!(target: "sandbox", "cleaning {}: {e}", this.cfg.work_dir.display());
            }
            if let Err(e) = remove_dir(&this.cfg.state_dir.join("worker")) {
                tracing::warn!(target: "sandbox", "cleaning the worker's home: {e}");
            }
            *lock(&this.phase) = Phase::Idle;
            tracing::info!(target: "sandbox", site = %d.site, "undeployed {}", d.site);
            // Emptied above (if that failed, the pre-warm empties it first).
            this.start_prewarm();
            d.site.clone()
        });
        task.await.map_err(|e| DeployError::Failed(format!("undeploy task failed: {e}")))
    }

    /// For shutdown: undeploy if anything is deployed.
    /// Pre-warming stops first, for good: its loop runs on a runtime that
    /// outlives the runner, and would go on writing DENO_DIR (a library's
    /// caller may start another runner on the same path).
    pub async fn shutdown(self: &Arc<Self>) {
        self.prewarm.stop();
        self.prewarm.cancel().await;
        if matches!(&*lock(&self.phase), Phase::Deployed(_)) {
            let _ = self.undeploy().await;
        }
    }
}

/// The deploy's cache (step 1): its config and the restore's options,
/// fallbacks included; with `{lock}`, its key is known after the clone.
struct CachePlan {
    config: CacheConfig,
    opts: RestoreOptions,
}

impl CachePlan {
    /// A key with `{lock}` names the site's dependency set, known only once
    /// the repo is cloned: then the clone comes first.
    fn lock_templated(&self) -> bool {
        self.config.key.as_deref().is_some_and(|k| k.contains(LOCK_PLACEHOLDER))
    }
}

/// The placeholder a deploy's `DECO_CACHE_S3_KEY` may hold for the lockfile
/// key of the cloned repo (`sandcache key`).
pub const LOCK_PLACEHOLDER: &str = "{lock}";

/// `template` with `{lock}` replaced by the repo's lockfile key
/// (`lock-<hash>`), or by `nolock` when the repo has no dependency file the
/// key can be made of (or one that cannot be read), with the reason logged:
/// the site then still has one stable key.
fn expand_lock_key(template: &str, repo: &Path) -> String {
    let part = match sandcache_engine::lock_key(repo, None) {
        Ok(k) => {
            tracing::info!(target: "sandbox", files = ?k.files, "lockfile key {} from {}", k.key, k.files.join(", "));
            k.key
        }
        Err(e) => {
            tracing::warn!(target: "sandbox", "no lockfile key for the repo ({e}); using `nolock`");
            "nolock".to_owned()
        }
    };
    template.replace(LOCK_PLACEHOLDER, &part)
}
