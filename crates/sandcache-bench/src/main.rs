//! The benchmark: sandcache against the seed's pipeline, on a real DENO_DIR,
//! against the local Garage, on tmpfs and on disk. One table from one run:
//! median time, bytes moved and peak RSS per case, and each case's ratio to
//! the seed pipeline measured in the same run.
//!
//! ```text
//! scripts/dev-s3.sh start && eval "$(scripts/dev-s3.sh env)"
//! cargo build --release -p sandcache
//! cargo run --release -p sandcache-bench -- --corpus /tmp/corpus/deno-dir
//! ```
//!
//! Every case runs as a child process under GNU `time`, which reports its
//! wall time and peak RSS (the largest process of a pipeline).

mod first_response;
mod link;
mod measure;
mod prewarmed;
mod served;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;

use crate::measure::{Row, Sample, add_package, measure, print_table, sh};
use futures::TryStreamExt;
use sandcache_store::{S3Spec, S3Store, Store, StoreOptions, StoreSpec};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    helper: Option<Helper>,
    /// A DENO_DIR to measure on (../shared/corpus/build.sh makes one).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// The same corpus plus one more npm package (`build.sh DIR extra`).
    /// Without it, the "added one package" case is skipped.
    #[arg(long)]
    corpus_extra: Option<PathBuf>,
    /// Store for the runs (default s3://sandcache, the local Garage).
    #[arg(long, default_value = "s3://sandcache")]
    store: String,
    /// Runs per case; the median is reported.
    #[arg(long, default_value = "3")]
    runs: usize,
    /// Filesystems to restore onto: a tmpfs dir and a disk dir.
    #[arg(long, default_value = "/dev/shm/sandcache-bench")]
    tmpfs: PathBuf,
    #[arg(long, default_value = "/var/tmp/sandcache-bench")]
    disk: PathBuf,
    /// The sandcache binary (default: beside this one).
    #[arg(long)]
    sandcache: Option<PathBuf>,
    /// An older sandcache binary (the per-key layout, before the shared
    /// pool) whose native restore is measured beside this one's.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The link to the S3 store for the "over an S3-like link" tables, in
    /// MB/s per connection.
    #[arg(long, default_value = "90")]
    store_mbps: u64,
    /// Each response's first byte comes this long after its request on
    /// that link (S3's time to first byte); the tables are measured with
    /// and without it.
    #[arg(long, default_value = "25")]
    store_latency_ms: u64,
    /// Only the restores over an S3-like link (needs --corpus-extra).
    #[arg(long)]
    link_only: bool,
}

/// Pipeline pieces the cases run in child processes.
#[derive(Debug, clap::Subcommand)]
enum Helper {
    /// Stream an object to stdout (the seed's GetObject body).
    Cat { store: String, key: String },
    /// Read all of stdin into memory, then one PUT (the seed's snapshot).
    PutBuffered { store: String, key: String },
    /// A synthetic store of many keys, then a store-wide `sandcache gc`
    /// over it, timed (wall time and peak RSS).
    GcSynthetic {
        store: String,
        #[arg(long, default_value = "10000")]
        keys: usize,
        #[arg(long, default_value = "3")]
        generations: usize,
    },
    /// Relay $AWS_ENDPOINT_URL through the benchmark's S3-like link until
    /// killed, printing the link's URL: one restore over it can then be
    /// traced (SANDCACHE_LOG=debug).
    Link {
        #[arg(long, default_value = "90")]
        mbps: u64,
        #[arg(long, default_value = "25")]
        latency_ms: u64,
    },
    /// Time from a deploy to the first proxied 200 for a Deno storefront:
    /// cold through a throttled registry (SANDCACHE_THROTTLE_BPS,
    /// SANDCACHE_THROTTLE_CONNECT_MS), warm, and warm hot-first; on tmpfs
    /// and on disk.
    FirstResponse {
        /// The deno binary (default: $SANDCACHE_DENO, else
        /// scripts/install-deno.sh's venv).
        #[arg(long)]
        deno: Option<PathBuf>,
        #[arg(long, default_value = "s3://sandcache")]
        store: String,
        /// The S3 store's link in MB/s per connection, relayed through a
        /// throttle (0: loopback as it is). A pod reaches its object store
        /// over a network, not loopback.
        #[arg(long, default_value = "0")]
        store_mbps: u64,
        /// Warm runs per mode (alternating); the median is reported.
        #[arg(long, default_value = "5")]
        runs: usize,
        #[arg(long, default_value = "/dev/shm/sandcache-bench")]
        tmpfs: PathBuf,
        #[arg(long, default_value = "/var/tmp/sandcache-bench")]
        disk: PathBuf,
        /// Which of the two to measure: tmpfs, disk or both.
        #[arg(long, default_value = "both", value_parser = ["tmpfs", "disk", "both"])]
        fs: String,
    },
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn store_of(spec: &str) -> Box<dyn Store> {
    match spec.parse::<StoreSpec>().expect("a store spec") {
        StoreSpec::Local(p) => Box::new(sandcache_store::LocalStore::new(p)),
        StoreSpec::S3(mut s3) => {
            s3.endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            s3.region = std::env::var("AWS_REGION").unwrap_or_else(|_| S3Spec::DEFAULT_REGION.into());
            Box::new(S3Store::new(&s3, &StoreOptions::default()).expect("an S3 store"))
        }
    }
}

fn helper(h: Helper) -> ExitCode {
    if let Helper::GcSynthetic { store, keys, generations } = h {
        return gc_synthetic(&store, keys, generations);
    }
    if let Helper::FirstResponse { deno, store, store_mbps, runs, tmpfs, disk, fs } = h {
        let deno = deno
            .or_else(|| std::env::var_os("SANDCACHE_DENO").map(PathBuf::from))
            .unwrap_or_else(|| dirs_home().join(".cache/sandcache-deno-venv/bin/deno"));
        if !deno.is_file() {
            eprintln!("error: no deno at {} (scripts/install-deno.sh, or --deno)", deno.display());
            return ExitCode::from(2);
        }
        let opts = first_response::Options {
            deno,
            store,
            store_bps: store_mbps * 1_000_000,
            runs: runs.max(1),
            roots: first_response::roots(&tmpfs, &disk)
                .into_iter()
                .filter(|(name, _)| fs == "both" || fs == *name)
                .collect(),
        };
        tokio::runtime::Runtime::new().expect("a runtime").block_on(first_response::run(opts));
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    if let Helper::Link { mbps, latency_ms } = h {
        let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
            eprintln!("error: no AWS_ENDPOINT_URL to relay");
            return ExitCode::from(2);
        };
        let target = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
        rt.block_on(async {
            let link = link::relay(&target, mbps, latency_ms).await;
            println!("{}", link.url());
            std::future::pending::<()>().await;
        });
        return ExitCode::SUCCESS;
    }
    rt.block_on(async {
        match h {
            Helper::Cat { store, key } => {
                use std::io::Write;
                let obj = store_of(&store).get(&key).await.expect("get");
                let mut out = std::io::stdout().lock();
                let mut s = obj.stream;
                while let Some(chunk) = s.try_next().await.expect("read") {
                    if out.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
            Helper::PutBuffered { store, key } => {
                use std::io::Read;
                let mut all = Vec::new();
                std::io::stdin().read_to_end(&mut all).expect("stdin");
                let body = futures::stream::once(async move { Ok(bytes::Bytes::from(all)) });
                store_of(&store).put(&key, Box::pin(body)).await.expect("put");
            }
            Helper::GcSynthetic { .. } | Helper::FirstResponse { .. } | Helper::Link { .. } => {
                unreachable!("handled above")
            }
        }
    });
    ExitCode::SUCCESS
}

// The runner runs in this process for the first-response tables: with the
// allocator `sandcache serve` uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // SANDCACHE_LOG (a tracing filter, as the CLI's) shows the engine's and
    // the runner's own logs, timestamped: where a run's time went.
    if let Ok(filter) = std::env::var("SANDCACHE_LOG") {
        let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
            eprintln!("warning: SANDCACHE_LOG={filter:?} is not a tracing filter ({e}); no logs");
            tracing_subscriber::EnvFilter::new("off")
        });
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if let Some(h) = args.helper {
        return helper(h);
    }
    let Some(corpus) = args.corpus.clone() else {
        eprintln!("error: --corpus DIR is required (../shared/corpus/build.sh DIR makes one)");
        return ExitCode::from(2);
    };
    let corpus = std::fs::canonicalize(&corpus).expect("corpus exists");
    let me = std::env::current_exe().expect("own path");
    let sc = args.sandcache.clone().unwrap_or_else(|| me.with_file_name("sandcache"));
    if !sc.is_file() {
        eprintln!(
            "error: no sandcache binary at {} (cargo build --release -p sandcache, or pass --sandcache)",
            sc.display()
        );
        return ExitCode::from(2);
    }
    let (sc, me) = (sc.display().to_string(), me.display().to_string());
    let store = &args.store;
    let run = format!("bench-{}", std::process::id());
    let runs = args.runs.max(1);
    let q = |p: &Path| format!("'{}'", p.display());

    let link = |extra: &Path| {
        let extra = std::fs::canonicalize(extra).expect("the extra corpus exists");
        link::restores(&link::Link {
            sc: &sc,
            me: &me,
            store,
            run: &run,
            corpus: &corpus,
            extra: &extra,
            root: &args.tmpfs,
            runs,
            mbps: args.store_mbps,
            latency_ms: args.store_latency_ms,
        });
    };
    if args.link_only {
        match &args.corpus_extra {
            Some(extra) => link(extra),
            None => eprintln!("error: --link-only needs --corpus-extra"),
        }
        return ExitCode::SUCCESS;
    }

    // Setup: the corpus in each stored form, and a plain local tar.
    eprintln!("setup: uploading the corpus as tgz and native, and writing a local tar");
    let work = args.disk.join(&run);
    std::fs::create_dir_all(&work).expect("work dir");
    let tar_file = work.join("corpus.tar");
    sh(&format!("tar -cf {} -C {} .", q(&tar_file), q(&corpus)));
    sh(&format!("{sc} snapshot -q --force --format tgz --dir {} --store {store} --key {run}/tgz", q(&corpus)));
    sh(&format!("{sc} snapshot -q --force --format native --dir {} --store {store} --key {run}/native", q(&corpus)));
    if let Some(old) = &args.baseline {
        sh(&format!("{} snapshot -q --force --dir {} --store {store} --key {run}/baseline", old.display(), q(&corpus)));
    }

    for (fs_name, root) in [("tmpfs", &args.tmpfs), ("disk", &args.disk)] {
        let root = root.join(&run).join("restore");
        std::fs::create_dir_all(&root).expect("restore root");
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            root.join(format!("d{n}"))
        };
        // Every case once per round, rounds alternating, so drift on a
        // shared machine hits every case alike; medians per case.
        type Case = (String, Box<dyn Fn(&Path) -> String>, Option<&'static str>, bool);
        let mut cases: Vec<Case> = Vec::new();
        let restore = |extra: &'static str, key: String| {
            let (sc, store) = (sc.clone(), store.clone());
            Box::new(move |d: &Path| {
                format!("{sc} restore -q --json {extra} --dir '{}' --store {store} --key {key}", d.display())
            }) as Box<dyn Fn(&Path) -> String>
        };
        {
            let (me, store, run) = (me.clone(), store.clone(), run.clone());
            cases.push((
                "seed: GetObject | tar -xzf -".into(),
                Box::new(move |d: &Path| format!("{me} cat {store} {run}/tgz | tar -xzf - -C '{}'", d.display())),
                None,
                true,
            ));
        }
        {
            let tar_file = tar_file.clone();
            cases.push((
                "floor: tar -xf local uncompressed tar".into(),
                Box::new(move |d: &Path| format!("tar -xf '{}' -C '{}'", tar_file.display(), d.display())),
                None,
                true,
            ));
        }
        cases.push(("sandcache restore, tgz".into(), restore("", format!("{run}/tgz")), None, false));
        cases.push(("sandcache restore, native".into(), restore("", format!("{run}/native")), None, false));
        if let Some(old) = &args.baseline {
            let (old, store, run) = (old.display().to_string(), store.clone(), run.clone());
            cases.push((
                "baseline binary restore, native, per-key layout".into(),
                Box::new(move |d: &Path| {
                    format!("{old} restore -q --json --dir '{}' --store {store} --key {run}/baseline", d.display())
                }),
                None,
                false,
            ));
        }
        // As a root runner restores for its worker: every entry chowned.
        if rustix::process::geteuid().is_root() {
            cases.push((
                "sandcache restore, native, --owner (chown to the worker)".into(),
                restore("--owner 10001:10001", format!("{run}/native")),
                None,
                false,
            ));
        }
        cases.push((
            "sandcache restore, native, 1 core (taskset)".into(),
            restore("", format!("{run}/native")),
            Some("0"),
            false,
        ));
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
        for _ in 0..runs {
            for (i, (_, script, cpus, premade)) in cases.iter().enumerate() {
                let d = fresh();
                if *premade {
                    std::fs::create_dir_all(&d).unwrap();
                }
                samples[i].push(measure(&script(&d), *cpus));
                sh(&format!("rm -rf {}", q(&d)));
            }
        }
        let mut rows: Vec<Row> = cases
            .iter()
            .zip(samples)
            .map(|((name, _, _, _), samples)| Row { name: name.clone(), samples, bytes: None })
            .collect();
        rows[1].bytes = Some(0);
        // The seed's bytes moved: the tgz object.
        let tgz_bytes = rows[2].median().bytes;
        rows[0].bytes = Some(tgz_bytes);
        print_table(&format!("Restore onto {fs_name} ({})", root.display()), "seed", &rows);
        println!(
            "restore (native, CLI wall time) / tar -xf floor on {fs_name}: {:.2} (target <= 1.15 on tmpfs; medians of {runs} alternating runs)",
            rows[3].median().secs / rows[1].median().secs
        );
        sh(&format!("rm -rf {}", q(&root)));
    }

    // Snapshots read the corpus; they run once, from the disk copy.
    let mut rows = Vec::new();
    let s: Vec<Sample> = (0..runs)
        .map(|i| {
            measure(
                &format!(
                    "tar -czf - -C / {} | {me} put-buffered {store} {run}/seed-{i}",
                    q(corpus.strip_prefix("/").unwrap())
                ),
                None,
            )
        })
        .collect();
    rows.push(Row { name: "seed: tar -czf into memory, one PutObject".into(), samples: s, bytes: None });
    // Full: a fresh store prefix (an empty pool), a fresh key and no local
    // index each time.
    let index =
        corpus.with_file_name(format!(".{}.sandcache-index.json", corpus.file_name().unwrap().to_string_lossy()));
    // With --baseline, the older binary's full snapshot runs right after
    // this one's in each round, so drift hits both alike.
    let (mut s, mut old_s) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let _ = std::fs::remove_file(&index);
        s.push(measure(
            &format!("{sc} snapshot -q --json --force --dir {} --store {store}/{run}-full-{i} --key k", q(&corpus)),
            None,
        ));
        if let Some(old) = &args.baseline {
            let _ = std::fs::remove_file(&index);
            old_s.push(measure(
                &format!(
                    "{} snapshot -q --json --force --dir {} --store {store}/{run}-old-full-{i} --key k",
                    old.display(),
                    q(&corpus)
                ),
                None,
            ));
        }
    }
    rows.push(Row { name: "sandcache snapshot, native, full".into(), samples: s, bytes: None });
    if !old_s.is_empty() {
        rows.push(Row { name: "baseline binary snapshot, native, full".into(), samples: old_s, bytes: None });
    }
    let last = runs - 1;
    // Unchanged, as a runner sees it: the state the last snapshot left says
    // nothing changed. Then the same with --force, where the native path
    // itself walks the tree against the newest generation.
    let s = (0..runs)
        .map(|_| {
            measure(
                &format!("{sc} snapshot -q --json --dir {} --store {store}/{run}-full-{last} --key k", q(&corpus)),
                None,
            )
        })
        .collect();
    rows.push(Row { name: "sandcache snapshot, native, unchanged".into(), samples: s, bytes: None });
    let s = (0..runs)
        .map(|_| {
            measure(
                &format!(
                    "{sc} snapshot -q --json --force --dir {} --store {store}/{run}-full-{last} --key k",
                    q(&corpus)
                ),
                None,
            )
        })
        .collect();
    rows.push(Row { name: "sandcache snapshot, native, unchanged, --force".into(), samples: s, bytes: None });
    if let Some(extra) = &args.corpus_extra {
        // Per run: a copy of the corpus, snapshotted; then the new package's
        // files are added and the timed snapshot uploads what changed.
        let s = (0..runs)
            .map(|i| {
                let copy = work.join(format!("extra-{i}/deno-dir"));
                sh(&format!("mkdir -p {p} && cp -a {}/. {p}", q(&corpus), p = q(&copy)));
                sh(&format!("{sc} snapshot -q --dir {} --store {store}/{run}-extra-{i} --key k", q(&copy)));
                add_package(&corpus, extra, &copy);
                measure(
                    &format!("{sc} snapshot -q --json --dir {} --store {store}/{run}-extra-{i} --key k", q(&copy)),
                    None,
                )
            })
            .collect();
        rows.push(Row { name: "sandcache snapshot, native, after adding one package".into(), samples: s, bytes: None });
    }
    // The seed uploads what tar -czf writes; measured once, untimed.
    let out = Command::new("sh")
        .args(["-c", &format!("tar -czf - -C / {} | wc -c", q(corpus.strip_prefix("/").unwrap()))])
        .output()
        .expect("sh");
    rows[0].bytes = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    print_table("Snapshot (corpus on disk)", "seed", &rows);
    if let Some(extra) = &args.corpus_extra {
        layers(&sc, store, &run, &corpus, extra, &work, runs);
        link(extra);
    }
    sh(&format!("rm -rf {}", q(&work)));
    ExitCode::SUCCESS
}

/// Bytes stored under a store URL (every object).
fn stored_bytes(store: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async { store_of(store).list("").await.expect("list").iter().map(|o| o.size).sum() })
}

/// Runs a sandcache command and returns its `--json` object.
fn json_of(script: &str) -> serde_json::Value {
    let out = Command::new("sh").args(["-c", script]).output().expect("sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Layers and sharing (issue 13), each in a store prefix of its own so the
/// pool starts empty: a site's first wake-up from a base and its first
/// snapshot, one package added to a key, ten keys of one corpus.
fn layers(sc: &str, store: &str, run: &str, corpus: &Path, extra: &Path, work: &Path, runs: usize) {
    let q = |p: &Path| format!("'{}'", p.display());
    // The added package's own files, and their size as a tar.zst.
    let list = work.join("added-files");
    sh(&format!(
        "cd {} && find . -type f | while read f; do [ -e {}/\"$f\" ] || echo \"$f\"; done > {}",
        q(extra),
        q(corpus),
        q(&list)
    ));
    let files = std::fs::read_to_string(&list).unwrap_or_default().lines().count();
    let out = Command::new("sh")
        .args(["-c", &format!("tar -cf - -C {} -T {} | zstd -3 -q -c | wc -c", q(extra), q(&list))])
        .output()
        .expect("sh");
    let pkg_zst: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let bound = pkg_zst * 3 / 2 + (64 << 10);
    let add_package = |dir: &Path| {
        sh(&format!(
            "cd {} && while read f; do mkdir -p {d}/\"$(dirname \"$f\")\"; cp -a \"$f\" {d}/\"$f\"; done < {}",
            q(extra),
            q(&list),
            d = q(dir)
        ));
    };
    println!(
        "\nLayers and sharing ({files} files added by one package: {:.1} KB as tar.zst; bound 1.5x that + 64 KB = {:.1} KB)",
        pkg_zst as f64 / 1e3,
        bound as f64 / 1e3
    );
    println!("| case | median bytes uploaded | ratio to bound | runs |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, mut v: Vec<u64>| {
        v.sort();
        let m = v[v.len() / 2];
        println!("| {name} | {:.1} KB | {:.2}x | {} |", m as f64 / 1e3, m as f64 / bound as f64, v.len());
    };
    // 1. First wake-up of a new site from a base, then its first snapshot.
    let mut first = Vec::new();
    let mut hits = Vec::new();
    for i in 0..runs {
        let s = format!("{store}/{run}-layers-{i}");
        sh(&format!("{sc} snapshot -q --dir {} --store {s} --key base/deno", q(corpus)));
        let dir = work.join(format!("site-{i}/deno-dir"));
        let r =
            json_of(&format!("{sc} restore -q --json --dir {} --store {s} --key site/cache --fallback base/", q(&dir)));
        hits.push(format!("{}:{}", r["hit"].as_str().unwrap_or("miss"), r["from_key"].as_str().unwrap_or("")));
        add_package(&dir);
        let snap = json_of(&format!("{sc} snapshot -q --json --dir {} --store {s} --key site/cache", q(&dir)));
        first.push(snap["transferred"].as_u64().unwrap_or(0));
    }
    row(&format!("first wake-up from a base, then the site's first snapshot (restore: {})", hits.join(", ")), first);
    // 2. One package added to an existing key.
    let mut added = Vec::new();
    for i in 0..runs {
        let s = format!("{store}/{run}-added-{i}");
        let dir = work.join(format!("added-{i}/deno-dir"));
        sh(&format!("mkdir -p {d} && cp -a {}/. {d}", q(corpus), d = q(&dir)));
        sh(&format!("{sc} snapshot -q --dir {} --store {s} --key site/cache", q(&dir)));
        add_package(&dir);
        let snap = json_of(&format!("{sc} snapshot -q --json --dir {} --store {s} --key site/cache", q(&dir)));
        added.push(snap["transferred"].as_u64().unwrap_or(0));
    }
    row("one package added to an existing key", added);
    // 3. Ten keys holding the same corpus, against one.
    let s = format!("{store}/{run}-ten");
    sh(&format!("{sc} snapshot -q --force --dir {} --store {s} --key site-0/cache", q(corpus)));
    let one = stored_bytes(&s);
    for k in 1..10 {
        sh(&format!("{sc} snapshot -q --force --dir {} --store {s} --key site-{k}/cache", q(corpus)));
    }
    let ten = stored_bytes(&s);
    println!(
        "\nStorage: one key {:.1} MB, ten keys of the same corpus {:.1} MB: {:.3}x (target at most 1.1x)",
        one as f64 / 1e6,
        ten as f64 / 1e6,
        ten as f64 / one as f64
    );
}

/// Fills `store` with `keys` keys of `generations` generations each: small
/// roots naming 30 of 256 shared packs and three pieces (one shared by all,
/// one per key, one per generation), plus 1,000 unreferenced pool objects;
/// then times `sandcache gc --keep 2 --grace 0` over it.
fn gc_synthetic(store: &str, keys: usize, generations: usize) -> ExitCode {
    use sandcache_archive::pack::{Manifest, PackRef, PieceRef};
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let target = store_of(store);
    let id = |s: String| blake3::hash(s.as_bytes()).to_hex().to_string();
    let pool = |id: &str, ext: &str| format!("pool/{}/{id}.{ext}", &id[..2]);
    let start = std::time::Instant::now();
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    let packs: Vec<String> = (0..256).map(|i| id(format!("pack {i}"))).collect();
    for p in &packs {
        objects.push((pool(p, "pack"), vec![0u8; 64]));
    }
    for i in 0..1000 {
        objects.push((pool(&id(format!("orphan {i}")), "pack"), vec![0u8; 64]));
    }
    let shared_piece = id("shared piece".into());
    objects.push((pool(&shared_piece, "tree"), vec![0u8; 64]));
    for k in 0..keys {
        let key_piece = id(format!("key piece {k}"));
        objects.push((pool(&key_piece, "tree"), vec![0u8; 64]));
        for g in 0..generations {
            let gen_piece = id(format!("piece {k} {g}"));
            objects.push((pool(&gen_piece, "tree"), vec![0u8; 64]));
            let root = Manifest {
                version: sandcache_archive::pack::VERSION,
                created_ms: 1_700_000_000_000 + g as u64,
                packs: (0..30)
                    .map(|j| PackRef { id: packs[(k * 7 + j) % 256].clone(), size: 64, hot: false })
                    .collect(),
                frames: Vec::new(),
                entries: Vec::new(),
                pieces: [&shared_piece, &key_piece, &gen_piece]
                    .iter()
                    .map(|p| PieceRef { id: (*p).clone(), size: 64, entries: 100 })
                    .collect(),
                hot: Vec::new(),
            };
            let name = format!("site-{k:05}/cache.tgz.d/manifests/{:013}-{:08x}.json.zst", root.created_ms, g);
            objects.push((name, root.encode()));
        }
    }
    let n = objects.len();
    rt.block_on(async {
        use futures::StreamExt;
        let target = &target;
        futures::stream::iter(objects)
            .map(|(k, b)| async move {
                let body = futures::stream::once(async move { Ok(bytes::Bytes::from(b)) });
                target.put(&k, Box::pin(body)).await.expect("put");
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    });
    eprintln!(
        "gc-synthetic: wrote {n} objects ({keys} keys x {generations} generations) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let sc = std::env::current_exe().expect("own path").with_file_name("sandcache");
    let report = std::env::temp_dir().join(format!("gc-synthetic-{}.json", std::process::id()));
    let s =
        measure(&format!("{} gc --store {store} --keep 2 --grace 0 --json > {}", sc.display(), report.display()), None);
    println!(
        "store-wide gc over {keys} keys x {generations} generations ({n} objects): {:.2} s, peak RSS {:.0} MiB: {}",
        s.secs,
        s.rss_kib as f64 / 1024.0,
        std::fs::read_to_string(&report).unwrap_or_default().trim()
    );
    let _ = std::fs::remove_file(&report);
    ExitCode::SUCCESS
}
