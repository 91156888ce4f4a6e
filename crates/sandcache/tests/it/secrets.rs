//! Secret hygiene over a full run: `sandcache serve` at trace level with
//! credentials in its environment and in deploys, a worker, restore,
//! snapshot, status, metrics, a failing clone with a token in its URL, an
//! undeploy, SIGTERM; then the CLI's restore, snapshot and gc, working and
//! failing. Every byte any of them printed or answered is searched for every
//! secret, and the worker's environment for the ones it must not get.

use std::fs;

use sandcache_testkit::serve::Serve;
use sandcache_testkit::tree::sample_tree;
use sandcache_testkit::wait_for;

use crate::support::{bin, http, run, tmp_with_out, worker_user_for_test};

#[test]
fn no_secret_reaches_any_output_or_the_worker() {
    // The worker runs as its own uid (when root): it reaches the script's
    // output dir only.
    let (tmp, out_dir) = tmp_with_out();
    // The S3 credentials are real when Garage is up (so the cache really
    // works), invented otherwise; the other secrets are invented.
    let spec = sandcache_testkit::s3::spec("secrets");
    let aws_secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "AWSSECRET-7d1f0c2a9e".into());
    let aws_key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "GKnotreal".into());
    let admin_s3 = "ADMINS3SECRET-0b9a4c7e1f";
    let session = "SESSIONTOKEN-3c5e7a9b1d";
    let admin_token = "ADMINTOKEN-e4d2c1b0a9";
    let git_token = "GITTOKEN-91ab27cd";
    let deploy_secret = "DEPLOYSECRET-55aa66bb";
    let secrets = [aws_secret.as_str(), admin_s3, session, admin_token, git_token, deploy_secret];

    let (bucket, endpoint, prefix) = match &spec {
        Some(s) => (s.bucket.clone(), s.endpoint.clone().unwrap(), s.prefix.clone()),
        None => ("nobucket".into(), "http://127.0.0.1:9".into(), "p".into()),
    };
    let server = Serve::command(bin(), tmp.path())
        .args(["--settle", "1"])
        .args(worker_user_for_test(2))
        .env("SANDCACHE_LOG", "trace")
        .env("SANDCACHE_ADMIN_TOKEN", admin_token)
        .env("AWS_ACCESS_KEY_ID", &aws_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
        .env("ADMIN_S3_SECRET_ACCESS_KEY", admin_s3)
        .env("ADMIN_S3_ACCESS_KEY_ID", "ADMINKEYID")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .log(&tmp.path().join("serve.log"))
        .start();
    let port = server.port;
    let mut answers = Vec::new();
    let mut call = |method: &str, path: &str, body: &str| {
        let reply = http(port, method, path, Some(admin_token), body).unwrap_or_default();
        answers.push(format!("{method} {path} -> {reply}"));
        reply
    };

    // A deploy whose cache is on the S3 server, with secrets in its envs,
    // one of them forwarded on purpose, and a worker that dumps its env.
    let dump = out_dir.join("worker-env");
    let script = format!(
        "mkdir -p \"$DENO_DIR/npm/pkg\" && echo 'export {{}}' > \"$DENO_DIR/npm/pkg/mod.js\"; env > {}; \
         exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        dump.display()
    );
    let envs = serde_json::json!({
        "DECO_CACHE_S3_BUCKET": bucket,
        "DECO_CACHE_S3_KEY": format!("{prefix}/site/cache"),
        "DECO_CACHE_S3_ENDPOINT": endpoint,
        "ADMIN_S3_SECRET_ACCESS_KEY": admin_s3,
        "AWS_SESSION_TOKEN": session,
        "APP_SECRET": deploy_secret,
    });
    let body = serde_json::json!({"site": "s", "runCommand": ["sh", "-c", script], "envs": envs}).to_string();
    let reply = call("POST", "/sandbox/deploy", &body);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_for("the worker's env dump", 30, || dump.exists() && fs::metadata(&dump).unwrap().len() > 0);
    call("GET", "/sandbox/status", "");
    call("POST", "/sandbox/cache/snapshot", "");
    wait_for("the snapshot outcome", 60, || call("GET", "/sandbox/status", "").contains("\"snapshot\":{"));
    call("GET", "/metrics", "");
    call("GET", "/", "");
    let reply = call("DELETE", "/sandbox/deploy", "");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A clone that fails, with a token in its URL.
    let body =
        serde_json::json!({"repo": format!("http://oauth2:{git_token}@127.0.0.1:9/org/site.git"), "runCommand": []});
    let reply = call("POST", "/sandbox/deploy", &body.to_string());
    assert!(reply.contains("cannot clone http://***@127.0.0.1:9/"), "a failing clone is refused, redacted: {reply}");
    call("GET", "/sandbox/status", "");
    call("GET", "/metrics", "");
    // Wrong or missing admin token.
    answers.push(http(port, "GET", "/sandbox/status", Some("wrong"), "").unwrap_or_default());
    server.stop();

    // The CLI, working and failing, verbosely.
    let store = match &spec {
        Some(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        None => tmp.path().join("store").display().to_string(),
    };
    let dir = tmp.path().join("cli/deno-dir");
    sample_tree(&dir);
    let mut outputs = Vec::new();
    for (args, secret_key) in [
        (vec!["snapshot", "--force"], aws_secret.as_str()),
        (vec!["restore"], aws_secret.as_str()),
        (vec!["gc", "--keep", "1"], aws_secret.as_str()),
        (vec!["restore"], "WRONGSECRET-1234abcd"),
        (vec!["snapshot", "--force"], "WRONGSECRET-1234abcd"),
    ] {
        let mut c = bin();
        c.args(&args).args(["--key", "cli/cache", "--store", &store]);
        if args[0] != "gc" {
            c.arg("--dir").arg(&dir);
        }
        c.env("SANDCACHE_LOG", "trace")
            .env("AWS_ACCESS_KEY_ID", &aws_key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .env("AWS_SESSION_TOKEN", session);
        if let Some(e) = &spec.as_ref().and_then(|s| s.endpoint.clone()) {
            c.env("AWS_ENDPOINT_URL", e);
        }
        let (code, json, err) = run(&mut c);
        outputs.push(format!("{args:?} exit {code}: {json} {err}"));
    }
    // And against a server that does not answer, for the error paths.
    let (_, json, err) = run(bin()
        .args(["restore", "--key", "k", "--store", "s3://bkt", "--endpoint", "http://127.0.0.1:9", "--timeout", "3"])
        .arg("--dir")
        .arg(&dir)
        .env("AWS_ACCESS_KEY_ID", &aws_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &aws_secret));
    outputs.push(format!("{json} {err}"));

    let mut everything = String::new();
    for f in ["serve.log", "serve.err"] {
        everything.push_str(&fs::read_to_string(tmp.path().join(f)).unwrap());
    }
    everything.push_str(&answers.join("\n"));
    everything.push_str(&outputs.join("\n"));
    assert!(everything.len() > 10_000, "a full run says a lot at trace level: {} bytes", everything.len());
    for s in secrets {
        assert!(!everything.contains(s), "a secret reached an output: {s}");
    }

    // The worker got what the deploy forwarded, never ADMIN_S3_* nor the
    // runner's own AWS credentials.
    let env = fs::read_to_string(&dump).unwrap();
    assert!(!env.contains("ADMIN_S3_"), "ADMIN_S3_* reached the worker");
    assert!(!env.contains(&aws_secret), "the runner's AWS secret reached the worker");
    assert!(!env.contains(admin_token), "the admin token reached the worker");
    assert!(env.contains(&format!("AWS_SESSION_TOKEN={session}")), "an explicitly forwarded var is forwarded");
    assert!(env.contains(&format!("APP_SECRET={deploy_secret}")), "the deploy's own app config is forwarded");
    eprintln!(
        "secrets: {} secrets searched for in {} bytes of logs, answers and CLI output: none found",
        secrets.len(),
        everything.len()
    );
}
