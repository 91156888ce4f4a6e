//! Restores over a link like S3's: the store relayed through a throttle
//! (`--store-mbps` per connection, `--store-latency-ms` before each
//! response's first byte), measured with and without the delay. Against
//! the one-stream peer: the site as one tar.zst object, `GET | zstd -dc |
//! tar -x`, over the same link.
//!
//! Cases, alternating per round:
//! * the peer, the site's tar.zst into an empty dir;
//! * sandcache's full restore of the site into an empty dir;
//! * sandcache's delta restore of the site over the base (the base
//!   restored first, untimed): what a pre-warmed pod's deploy does;
//! * a delta restore of the site over itself (nothing differs).

use std::path::Path;
use std::time::Duration;

use sandcache_testkit::throttle::{ThrottleOptions, ThrottledProxy};

use crate::measure::{Row, Sample, add_package, measure, print_table, sh};

pub(crate) struct Link<'a> {
    pub sc: &'a str,
    pub me: &'a str,
    pub store: &'a str,
    pub run: &'a str,
    pub corpus: &'a Path,
    pub extra: &'a Path,
    /// Where the restores go: tmpfs, so the link is what is measured.
    pub root: &'a Path,
    pub runs: usize,
    pub mbps: u64,
    pub latency_ms: u64,
}

/// The store at `target` (host:port) relayed through the link.
pub(crate) async fn relay(target: &str, mbps: u64, latency_ms: u64) -> ThrottledProxy {
    let opts = ThrottleOptions {
        bytes_per_sec: mbps * 1_000_000,
        connect_delay: Duration::from_millis(2),
        first_byte_delay: Duration::from_millis(latency_ms),
        // S3 serves each connection at its own speed.
        per_connection: true,
    };
    ThrottledProxy::relay_to(target, opts).await.expect("store link")
}

pub(crate) fn restores(l: &Link<'_>) {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        eprintln!("link restores: no AWS_ENDPOINT_URL (an S3 store); skipped");
        return;
    };
    let q = |p: &Path| format!("'{}'", p.display());
    let (sc, me, store, run) = (l.sc, l.me, l.store, l.run);
    let prefix = format!("{run}/link");
    // The site as a deploy makes it: the base restored as its fallback,
    // the files Deno adds for one more package, and its own snapshot (which
    // reuses the base's packs and pieces, and adds what the package adds).
    // A tree of its own, built apart, would differ from the base in every
    // file's time.
    let root = l.root.join(format!("{run}-link"));
    let site = root.join("site");
    eprintln!("setup: the base and the site stored native, the site as one tar.zst");
    sh(&format!("{sc} snapshot -q --force --dir {} --store {store} --key {prefix}/base", q(l.corpus)));
    let from_base = format!("--key {prefix}/site --fallback {prefix}/base");
    sh(&format!("{sc} restore -q --dir {} --store {store} {from_base} > /dev/null", q(&site)));
    add_package(l.corpus, l.extra, &site);
    sh(&format!("{sc} snapshot -q --force --dir {} --store {store} --key {prefix}/site", q(&site)));
    sh(&format!("tar -cf - -C {} . | zstd -3 -T0 -q -c | {me} put-buffered {store} {prefix}/site.tar.zst", q(&site)));
    sh(&format!("rm -rf {}", q(&site)));
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let target = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    for latency in [0, l.latency_ms] {
        let link = rt.block_on(relay(&target, l.mbps, latency));
        let env = format!("AWS_ENDPOINT_URL={}", link.url());
        let restore = |d: &Path, key: &str| {
            format!("{env} {sc} restore -q --json --dir {} --store {store} --key {prefix}/{key}", q(d))
        };
        type Case<'c> = (&'static str, Box<dyn Fn(&Path) -> String + 'c>, Box<dyn Fn(&Path) + 'c>);
        let none = || Box::new(|_: &Path| {}) as Box<dyn Fn(&Path)>;
        let cases: Vec<Case> = vec![
            (
                "peer: GET site.tar.zst | zstd -dc | tar -x (one stream)",
                Box::new(|d: &Path| {
                    format!(
                        "mkdir -p {d} && {env} {me} cat {store} {prefix}/site.tar.zst | zstd -dc | tar -xf - -C {d}",
                        d = q(d)
                    )
                }),
                none(),
            ),
            ("sandcache restore, full, into an empty dir", Box::new(|d: &Path| restore(d, "site")), none()),
            (
                "sandcache restore, delta over the base (a pre-warmed pod)",
                Box::new(|d: &Path| restore(d, "site")),
                Box::new(|d: &Path| sh(&format!("{} > /dev/null", restore(d, "base")))),
            ),
            (
                "sandcache restore, delta over the same generation",
                Box::new(|d: &Path| restore(d, "site")),
                Box::new(|d: &Path| sh(&format!("{} > /dev/null", restore(d, "site")))),
            ),
        ];
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
        let mut written: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
        let mut n = 0;
        for _ in 0..l.runs {
            for (i, (_, script, prepare)) in cases.iter().enumerate() {
                n += 1;
                let d = root.join(format!("d{n}/deno-dir"));
                prepare(&d);
                let out = measure(&script(&d), None);
                written[i].push(out.written);
                samples[i].push(out);
                sh(&format!("rm -rf {}", q(d.parent().unwrap())));
            }
        }
        let rows: Vec<Row> = cases
            .iter()
            .zip(samples)
            .map(|((name, _, _), samples)| Row { name: (*name).to_owned(), samples, bytes: None })
            .collect();
        let title = format!(
            "Restore of the site (corpus + one package) over an S3-like link: {} MB/s per connection, {latency} ms to each response's first byte",
            l.mbps
        );
        print_table(&title, "peer", &rows);
        let m = |i: usize| rows[i].median().secs;
        let median_written = |i: usize| {
            let mut v = written[i].clone();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        println!(
            "full / peer: {:.2} (target <= 0.9); delta over the base / peer: {:.2} (target <= 0.3); delta over the same generation / full: {:.2}; files written (median): full {}, delta over the base {}, delta over the same {}",
            m(1) / m(0),
            m(2) / m(0),
            m(3) / m(1),
            median_written(1),
            median_written(2),
            median_written(3),
        );
        drop(link);
    }
    sh(&format!("rm -rf {}", q(&root)));
}
