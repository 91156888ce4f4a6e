//! End to end over a socket: Garage as the store, real Deno as the worker, a
//! site in a local git repo. Cold first deploy, then a warm one offline.

use std::time::{Duration, Instant};

use sandcache_testkit::http::{self, Request};
use serde_json::{Value, json};

use crate::support::Served;

async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = http::send(addr, &Request::new(method, path).json(body)).await.unwrap();
    (resp.status(), resp.body().to_owned())
}

/// The body of a chunked or plain response, good enough for a short text.
fn text_of(body: &str) -> String {
    body.lines().filter(|l| l.contains("hello")).collect::<Vec<_>>().join("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deno_site_deploys_cold_then_warm_from_garage() {
    let Some(spec) = sandcache_testkit::s3::spec("runner-e2e") else { return };
    let Some(deno) = sandcache_testkit::deno::binary("a_deno_site_deploys_cold_then_warm_from_garage") else { return };
    let tmp = tempfile::tempdir().unwrap();
    // As root, the site runs as a worker uid of its own, as in production:
    // it must reach Deno, the repo and its dirs, and own DENO_DIR.
    let root = rustix::process::geteuid().is_root();
    let deno = if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        sandcache_testkit::deno::linked_into(&deno, tmp.path())
    } else {
        deno
    };
    let repo = tmp.path().join("repo");
    let main = r#"import ms from "npm:ms@2.1.3";
import isNumber from "npm:is-number@7.0.0";
const port = Number(Deno.env.get("PORT"));
Deno.serve({ port, hostname: "127.0.0.1" }, () => new Response(`hello ${ms(60_000)} ${isNumber(port)}\n`));
"#;
    // As root, the worker's: git refuses a local repo another uid owns (a
    // real site's is remote).
    sandcache_testkit::site::repo(&repo, &[("main.ts", main)], root.then_some(20013));
    let mut cfg = super::test_config(tmp.path());
    cfg.settle = Duration::from_secs(1);
    cfg.settle_poll = Duration::from_millis(250);
    let worker = sandcache_runner::isolation::WorkerUser { uid: 20013, gid: 20013 };
    if root {
        cfg.worker_user = Some(worker);
    }
    let deno_dir = cfg.deno_dir.clone();
    let served = Served::start(cfg).await;
    let addr = served.addr;

    let key = format!("{}/storefront/cache.tgz", spec.prefix);
    // The registry as a sandbox sees it: one throttled link (40 MB/s, 50 ms
    // per connection), not this machine's fast one.
    let registry = sandcache_testkit::throttle::ThrottledProxy::start(Default::default()).await.unwrap();
    let envs = |offline: bool| {
        let mut e = json!({
            "DECO_CACHE_S3_BUCKET": spec.bucket,
            "DECO_CACHE_S3_KEY": key,
            "DECO_CACHE_S3_ENDPOINT": spec.endpoint.clone().unwrap(),
            "NO_COLOR": "1",
        });
        let proxy = if offline { "http://127.0.0.1:9".to_owned() } else { registry.url() };
        for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            e[var] = json!(proxy);
        }
        e
    };
    let repo_url = format!("file://{}", repo.display());
    let status =
        || async { serde_json::from_str::<Value>(&http(addr, "GET", "/sandbox/status", None).await.1).unwrap() };
    let wait = |what: &'static str, pred: fn(&Value) -> bool| async move {
        let start = Instant::now();
        loop {
            let s = status().await;
            if pred(&s) {
                return (s, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(90), "waiting for {what}: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // 1. Cold: no cache yet. The worker fetches its deps from npm.
    let t0 = Instant::now();
    let run = json!([deno, "run", "--allow-net", "--allow-env", "main.ts"]);
    let (code, body) =
        http(addr, "POST", "/sandbox/deploy", Some(json!({"repo": repo_url, "runCommand": run, "envs": envs(false)})))
            .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"ok": true, "site": "repo"}));
    let (s, _) = wait("cold worker ready", |s| s["worker"] == "ready" || s["worker"] == "failed").await;
    let cold_ready = t0.elapsed();
    assert_eq!(s["worker"], "ready", "{s}");
    assert_eq!(s["cache"]["restore"]["reason"], "not_found", "{s}");
    let (code, body) = http(addr, "GET", "/", None).await;
    assert_eq!((code, text_of(&body)), (200, "hello 1m true".to_owned()), "{body}");
    let (s, _) = wait("deps-ready snapshot", |s| !s["cache"]["snapshot"].is_null()).await;
    assert_eq!(s["cache"]["snapshot"]["ok"], true, "{s}");
    assert!(s["cache"]["snapshot"]["files"].as_u64().unwrap() > 5, "{s}");

    // The snapshot holds the npm packages: restore it elsewhere and look.
    let cache = sandcache_engine::Cache::new(
        std::sync::Arc::new(
            sandcache_store::S3Store::new(
                &{
                    let mut sp = spec.clone();
                    sp.prefix = String::new();
                    sp
                },
                &Default::default(),
            )
            .unwrap(),
        ),
        key.clone(),
    );
    let check = tmp.path().join("check");
    assert!(cache.restore(&check, &Default::default()).await.is_done());
    assert!(check.join("npm/registry.npmjs.org/ms/2.1.3/package.json").is_file());
    assert!(check.join("npm/registry.npmjs.org/is-number/7.0.0/package.json").is_file());
    // The hot set is what Deno read: the modules it loaded, not the
    // packages' readmes (on a mount that records reads).
    let root_store = {
        let mut sp = spec.clone();
        sp.prefix = String::new();
        sandcache_store::S3Store::new(&sp, &Default::default()).unwrap()
    };
    let m = sandcache_testkit::generations::newest_whole(&root_store, &key).await.unwrap();
    let hot = |p: &str| m.entries.iter().find(|e| e.path == p).map(|e| e.hot);
    let readme = "npm/registry.npmjs.org/ms/2.1.3/readme.md";
    if m.entries.iter().any(|e| e.hot) {
        assert_eq!(hot("npm/registry.npmjs.org/ms/2.1.3/index.js"), Some(true), "Deno loaded it");
        assert_eq!(hot(readme), Some(false), "Deno never read it");
    } else {
        eprintln!("no hot set recorded: DENO_DIR's mount does not record reads");
    }

    // 2. Undeploy, and lose the cache dir as a new pod would.
    let (code, body) = http(addr, "DELETE", "/sandbox/deploy", None).await;
    assert_eq!(code, 200, "{body}");
    std::fs::remove_dir_all(&deno_dir).unwrap();

    // 3. Warm: the restore hits, and the worker starts with no network.
    let t1 = Instant::now();
    let offline = json!({"repo": repo_url, "runCommand": [deno, "run", "--cached-only", "--allow-net", "--allow-env", "main.ts"], "envs": envs(true)});
    let (code, body) = http(addr, "POST", "/sandbox/deploy", Some(offline.clone())).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(addr, "GET", "/", None).await;
    let warm_first = t1.elapsed();
    assert_eq!((code, text_of(&body)), (200, "hello 1m true".to_owned()), "{body}");
    let (s, _) = wait("warm worker ready", |s| s["worker"] == "ready" || s["worker"] == "failed").await;
    let warm_ready = t1.elapsed();
    assert_eq!(s["worker"], "ready", "{s}");
    assert_eq!(s["cache"]["restore"]["ok"], true, "{s}");
    // Hot first (the default): the hot set came first, the worker started
    // then, and the first response waited for the rest.
    let (hot_ms, ms) = (s["cache"]["restore"]["hot_ms"].as_u64(), s["cache"]["restore"]["ms"].as_u64());
    assert!(hot_ms.is_some() && hot_ms <= ms, "{s}");
    assert!(s["timings"]["first_response_ms"].as_u64().is_some(), "{s}");
    eprintln!(
        "time to worker-ready: cold {cold_ready:?} (registry at 40 MB/s), warm {warm_ready:?}; warm first response {warm_first:?}; timings {} (worker as root: {})",
        s["timings"], !root
    );
    if root {
        use std::os::unix::fs::MetadataExt;
        for p in ["", "npm", "npm/registry.npmjs.org/ms/2.1.3/package.json"] {
            let m = std::fs::symlink_metadata(deno_dir.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (worker.uid, worker.gid), "{p} is the worker's");
        }
    }

    // Shutdown undeploys: the worker is stopped and the work dir cleaned.
    served.stop().await.unwrap();
    assert!(!tmp.path().join("site").exists());

    // 4. A pre-warmed pod of a tenant pool: idle, it restores the site's
    // key; the deploy's restore is then a delta that writes nothing, and
    // Deno serves the site offline.
    let pod = tmp.path().join("pod");
    std::fs::create_dir(&pod).unwrap();
    let mut cfg = super::test_config(&pod);
    let mut store = spec.clone();
    store.prefix = String::new();
    cfg.cache_defaults =
        sandcache_engine::CacheConfig { store: Some(sandcache_store::StoreSpec::S3(store)), key: None };
    cfg.prewarm = Some(key.clone());
    if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o755)).unwrap();
        cfg.worker_user = Some(worker);
    }
    // Serving, an idle runner pre-warms.
    let served = Served::start(cfg).await;
    let addr = served.addr;
    let status =
        || async { serde_json::from_str::<Value>(&http(addr, "GET", "/sandbox/status", None).await.1).unwrap() };
    let start = Instant::now();
    while status().await["prewarm"]["state"] != "ready" {
        assert!(start.elapsed() < Duration::from_secs(60), "no pre-warm: {}", status().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = http(addr, "POST", "/sandbox/deploy", Some(offline)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(addr, "GET", "/", None).await;
    assert_eq!((code, text_of(&body)), (200, "hello 1m true".to_owned()), "{body}");
    let s = status().await;
    let r = &s["cache"]["restore"];
    assert_eq!((r["mode"].as_str(), r["files_written"].as_u64()), (Some("delta"), Some(0)), "{s}");
    served.stop().await.unwrap();
}
