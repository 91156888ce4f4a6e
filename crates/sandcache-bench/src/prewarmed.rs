//! Time to first response for a pre-warmed pod: the storefront's cache is
//! the pool-wide base, and the site is the storefront plus one package
//! (`extra-package.ts`'s `yaml`). Each row is a deploy of the site, from
//! the request to its first proxied 200, alternating per round:
//!
//! * **floor**: the site's own generation pre-warmed, and the deploy's key
//!   one with nothing stored (no fallback): its restore is a miss that
//!   leaves the dir as the pre-warm made it, so the row costs no restore
//!   at all but a miss's two requests;
//! * **pre-warmed**: the base pre-warmed, the site restored as a delta;
//! * **warm**: no pre-warm, the site restored whole (as before);
//!
//! and the site's first deploy, once (cold is in the table above). One pod
//! at a time, all on one DENO_DIR path (Deno's caches name modules by their
//! absolute paths): started, pre-warmed before its deploy (as a pool pod is
//! claimed after idling: the pre-warm done, and the dir checked while idle,
//! `prewarm.checked`), one deploy, undeployed, stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use sandcache_engine::CacheConfig;
use sandcache_runner::RunnerConfig;
use sandcache_store::StoreSpec;
use serde_json::{Value, json};

use crate::served::{Served, deploy_to_first_200, median, status, undeploy};

/// The storefront plus one package.
fn site_app(storefront: &str) -> String {
    let extra = "import * as yaml from \"npm:yaml@2.8.1\";\n";
    storefront.replacen("const loaded = [", &format!("{extra}const loaded = [yaml, "), 1)
}

pub(crate) struct Prewarmed<'a> {
    pub fs_name: &'a str,
    pub root: &'a Path,
    pub store: &'a StoreSpec,
    /// The storefront's key: the base.
    pub base: &'a str,
    pub storefront: &'a str,
    /// The deploy body's run command and envs (the registry's proxy).
    pub body: &'a Value,
    /// A runner config for this root.
    pub config: &'a dyn Fn(bool) -> RunnerConfig,
    pub runs: usize,
}

async fn wait_prewarmed(s: &Served) {
    let start = Instant::now();
    loop {
        let st = status(s.addr).await;
        // As a pod of the pool waits for a claim: pre-warmed, and checked
        // while idle (when the watches can be had at all: else ready is as
        // far as it goes).
        let ready = st["phase"] == "idle" && st["prewarm"]["state"] == "ready";
        if ready && (st["prewarm"]["checked"] == true || start.elapsed() > Duration::from_secs(20)) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no pre-warm: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn measure(p: &Prewarmed<'_>) {
    let repo = p.root.join("repo-site");
    sandcache_testkit::site::repo(&repo, &[("main.ts", &site_app(p.storefront))], None);
    let site = format!("{}-site", p.base);
    let mut body = p.body.clone();
    body["repo"] = json!(format!("file://{}", repo.display()));
    body["site"] = json!("site");
    // The floor's deploy restores a key with nothing stored (a new one per
    // run: the deploy's own snapshot stores under it), no fallback.
    let floors = std::sync::atomic::AtomicUsize::new(0);
    let runner = |prewarm: Option<&str>| {
        let mut cfg = (p.config)(true);
        let floor = prewarm == Some(site.as_str());
        let key = match floor {
            true => format!("{}-nothing-stored-{}", p.base, floors.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            false => site.clone(),
        };
        cfg.cache_defaults = CacheConfig { store: Some(p.store.clone()), key: Some(key) };
        cfg.fallbacks = if floor { Vec::new() } else { vec![p.base.to_owned()] };
        cfg.prewarm = prewarm.map(str::to_owned);
        // One DENO_DIR path for every pod, as in production: Deno's caches
        // name modules by their absolute paths, so a generation written
        // from another path would miss them all. The base's own (the
        // storefront's runs above wrote it): with another path here, the
        // site's first run compiled every module again under it, and its
        // code cache held both (20.6 MB instead of 11), which every
        // pre-warmed deploy then wrote. A state dir of its own: each pod
        // starts from what its pre-warm proves.
        cfg.state_dir = p.root.join("state-pod");
        cfg
    };

    // The site's first deploy: from the base, the new package through the
    // registry; its deps-ready snapshot is the site's generation. Then one
    // unmeasured warm run records the warm boot's hot set.
    let first = Served::start(runner(None)).await;
    let (cold, st) = deploy_to_first_200(&first, &body).await;
    assert_eq!(st["cache"]["restore"]["from_key"], p.base, "{st}");
    let start = Instant::now();
    while status(first.addr).await["cache"]["snapshot"]["ok"] != true {
        assert!(start.elapsed() < Duration::from_secs(300), "no deps-ready snapshot: {}", status(first.addr).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    undeploy(&first).await;
    let _ = deploy_to_first_200(&first, &body).await;
    undeploy(&first).await;

    first.stop().await;
    // One pod at a time, on the one DENO_DIR: started (a pod of the pool),
    // pre-warmed before the claim, one deploy, undeployed, stopped.
    let modes: [(&str, Option<&str>); 3] = [("floor", Some(&site)), ("pre-warmed", Some(p.base)), ("warm", None)];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut written: Vec<Vec<u64>> = vec![Vec::new(); modes.len()];
    let mut restore_ms: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    // From the deploy to the worker's start (the deploy's own `ms`): what
    // the restore holds the boot up by, without the boot's noise.
    let mut started_ms: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..p.runs {
        for (i, (name, prewarm)) in modes.iter().enumerate() {
            let pod = Served::start(runner(*prewarm)).await;
            let s = &pod;
            if prewarm.is_some() {
                wait_prewarmed(s).await;
            }
            let (t, st) = deploy_to_first_200(s, &body).await;
            let (r, started) = (&st["cache"]["restore"], &st["last_deploy"]["ms"]);
            match *name {
                // A miss: the dir left as the pre-warm made it.
                "floor" => assert_eq!(r["reason"], "not_found", "{name}: {st}"),
                _ => assert_eq!(r["ok"], true, "{name}: {st}"),
            }
            eprintln!(
                "  {name}: {t:.3} s: restore {} ms, mode {}, {} files written, worker started at {} ms, boot {} ms",
                r["ms"], r["mode"], r["files_written"], started, st["timings"]["boot_ms"]
            );
            times[i].push(t);
            written[i].push(r["files_written"].as_u64().unwrap_or(0));
            restore_ms[i].push(r["ms"].as_f64().unwrap_or(f64::NAN));
            started_ms[i].push(started.as_f64().unwrap_or(f64::NAN));
            undeploy(s).await;
            pod.stop().await;
        }
    }
    let names: Vec<&str> = modes.iter().map(|(n, _)| *n).collect();
    let m: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let w = |i: usize| {
        let mut v = written[i].clone();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "\nTime to first response, pre-warmed pods, onto {} ({}): the storefront as the base, the site adds one package",
        p.fs_name,
        p.root.display()
    );
    println!(
        "| case | median s to first 200 | ratio to floor | restore ms (median) | worker started, ms (median) | files written (median) | runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.3} | {:.2}x | {:.0} | {:.0} | {} | {} |",
            m[i],
            m[i] / m[0],
            median(&restore_ms[i]),
            median(&started_ms[i]),
            w(i),
            times[i].len()
        );
    }
    println!(
        "| the site's first deploy (the base restored, its package through the registry) | {cold:.3} | {:.2}x | | | | 1 |",
        cold / m[0]
    );
    println!(
        "pre-warmed / floor: {:.2} (target <= 1.2); (pre-warmed - floor) / (warm - floor): {:.2} (target <= 0.2); files the pre-warmed deploy wrote: {} (the package's, its dirs, bookkeeping)",
        m[1] / m[0],
        (m[1] - m[0]) / (m[2] - m[0]),
        w(1)
    );
    // The boot (hundreds of ms, varying by tens between runs) is in both
    // medians above; the worker's start is before it. (A hot-first warm
    // deploy's cost is not all before it: its tail lands during the boot.)
    // Over the same denominator: the restore's cost to the critical path
    // without the two rows' boots, whose medians differ by up to 90 ms
    // between sessions either way.
    let lag = median(&started_ms[1]) - median(&started_ms[0]);
    println!(
        "the worker's start, pre-warmed - floor: {lag:.0} ms (medians; the boot left out), {:.2} of (warm - floor)",
        lag / ((m[2] - m[0]) * 1000.0)
    );
}
