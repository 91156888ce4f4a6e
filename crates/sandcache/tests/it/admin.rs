//! `sandcache delete` through the binary, and arbitrary configuration
//! strings through every flag and variable: exit 0 or 2, never a panic.

use std::path::Path;

use proptest::prelude::*;
use sandcache_testkit::tree::sample_tree;

use crate::{bin, run};

/// The stores the CLI tests use: the local directory always, Garage when it
/// is up (a fresh prefix).
fn stores(test: &str, tmp: &Path) -> Vec<String> {
    let mut v = vec![tmp.join("store").display().to_string()];
    if let Some(spec) = sandcache_testkit::s3::spec(test) {
        v.push(format!("s3://{}/{}", spec.bucket, spec.prefix));
    }
    v
}

#[test]
fn delete_makes_the_next_restore_a_miss_and_leaves_other_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    for store in stores("cli-delete", tmp.path()) {
        let snapshot = |key: &str, format: &str| {
            let (code, json, err) = run(bin()
                .args(["snapshot", "--json", "--force", "--format", format, "--key", key, "--store", &store, "--dir"])
                .arg(&src));
            assert_eq!((code, json["ok"].as_bool()), (0, Some(true)), "{json} {err}");
        };
        snapshot("site/cache.tgz", "native");
        snapshot("site/cache.tgz", "tgz");
        snapshot("other/cache.tgz", "native");

        let delete = |key: &str| run(bin().args(["delete", "--json", "--key", key, "--store", &store]));
        let (code, json, err) = delete("site/cache.tgz");
        assert_eq!(code, 0, "{err}");
        assert_eq!((json["ok"].as_bool(), json["op"].as_str()), (Some(true), Some("delete")), "{json}");
        assert_eq!(json["generations_deleted"], 1, "{json}");
        // The generation, the seed's object, the key's pointer and the
        // pieces copied beside it; packs are in the shared pool.
        assert!(json["objects_deleted"] == 4 && json["not_found"] == false, "{json}");
        assert_eq!(json["key"], "site/cache.tgz", "{json}");

        let restore = |key: &str, dir: &str| {
            run(bin().args(["restore", "--json", "--key", key, "--store", &store, "--dir"]).arg(tmp.path().join(dir)))
        };
        let (_, json, _) = restore("site/cache.tgz", "a");
        assert_eq!(json["reason"], "not_found", "{json}");
        let (_, json, _) = restore("other/cache.tgz", "b");
        assert_eq!(json["ok"], true, "another key is untouched: {json}");

        // A key with nothing under it is not an error.
        let (code, json, err) = delete("site/cache.tgz");
        assert_eq!((code, json["not_found"].as_bool()), (0, Some(true)), "{json} {err}");
        // Usage errors exit 2 and say what was wrong.
        let (code, _, err) = run(bin().args(["delete", "--key", "../x", "--store", &store]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("invalid cache key"), "{err}");
        let (code, _, err) = run(bin().args(["delete", "--key", "k", "--store", "off"]));
        assert!(code == 2 && err.contains("off"), "{err}");
    }
    // A store that fails is exit 1, with the JSON saying so.
    let mut cmd = bin();
    cmd.args(["delete", "--json", "--key", "k", "--store", "s3://bkt", "--endpoint", "http://127.0.0.1:9"]);
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE").env("AWS_SECRET_ACCESS_KEY", "x");
    let (code, json, err) = run(&mut cmd);
    assert_eq!((code, json["ok"].as_bool()), (1, Some(false)), "{json} {err}");
    assert!(json["error"].as_str().unwrap().contains("listing"), "{json}");
}

/// A value for one field: arbitrary text (no NUL: the OS cannot pass it),
/// printable junk, or a value valid for the field.
fn value(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>().prop_map(|s| s.replace('\0', "")),
        1 => "[ -~]{0,50}",
        3 => valid,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every store flag and variable, with arbitrary strings: the CLI
    /// exits 0 (an outcome, as JSON) or 2 (a usage error naming what was
    /// wrong), never 101 or a panic.
    #[test]
    fn arbitrary_config_strings_never_panic_the_cli(
        bucket in value("[a-z0-9][a-z0-9.-]{1,12}[a-z0-9]"),
        prefix in value("[a-z]{1,6}(/[a-z]{1,6})?"),
        key in value("[a-z]{1,6}/cache\\.tgz"),
        endpoint in value("http://127\\.0\\.0\\.1:9"),
        region in value("[a-z]{2}-[a-z]{4,7}-[0-9]"),
        key_id in value("[A-Z0-9]{20}"),
        through_env in any::<bool>(),
        op in prop::sample::select(vec!["restore", "snapshot"]),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let mut cmd = bin();
        cmd.args([op, "--json", "--timeout", "1"]).arg("--dir").arg(&dir);
        cmd.env("AWS_ACCESS_KEY_ID", &key_id).env("AWS_SECRET_ACCESS_KEY", "secret");
        cmd.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_REGION").env_remove("AWS_DEFAULT_REGION");
        cmd.env("HOME", tmp.path());
        if through_env {
            cmd.env("DECO_CACHE_S3_BUCKET", &bucket).env("DECO_CACHE_S3_KEY", &key);
            cmd.env("DECO_CACHE_S3_ENDPOINT", &endpoint).env("DECO_CACHE_S3_REGION", &region);
        } else {
            cmd.args(["--store", &format!("s3://{bucket}/{prefix}"), "--key", &key]);
            cmd.args(["--endpoint", &endpoint, "--region", &region]);
        }
        let (code, json, err) = run(&mut cmd);
        prop_assert!(code == 0 || code == 2, "exit {}: {} {}", code, json, err);
        prop_assert!(!err.contains("panicked"), "{}", err);
        prop_assert_ne!(json["reason"].as_str(), Some("internal"), "{}", json);
        if code == 0 {
            prop_assert_eq!(json["op"].as_str(), Some(op), "{}", json);
        } else {
            prop_assert!(err.starts_with("error: "), "{}", err);
        }
    }
}

/// DENO_DIR bind-mounted from the file system that holds its parent (same
/// device number): still recognised as a mount point, so a restore swaps
/// its entries instead of renaming the mount (EBUSY). Root only (it mounts,
/// in a mount namespace of its own).
#[test]
fn a_same_filesystem_bind_mount_is_restored_into() {
    if !rustix::process::geteuid().is_root() || std::process::Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("skipping: needs root and unshare");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    sample_tree(&src);
    let (code, _, err) = run(bin().args(["snapshot", "--key", "k", "--store"]).arg(&store).arg("--dir").arg(&src));
    assert_eq!(code, 0, "{err}");
    let (backing, dir) = (tmp.path().join("backing"), tmp.path().join("parent/deno-dir"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(backing.join("old"), b"previous").unwrap();
    let script = format!(
        "mount --bind {backing} {dir} && for i in 1 2; do {bin} restore --json --key k --store {store} --dir {dir} || exit 9; done",
        backing = backing.display(),
        dir = dir.display(),
        bin = env!("CARGO_BIN_EXE_sandcache"),
        store = store.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("\"ok\":true").count(), 2, "both restores are done: {stdout}");
    // The mount is gone with the namespace; the restore landed in the backing dir.
    sandcache_testkit::tree::assert_same_tree(&src, &backing);
}
