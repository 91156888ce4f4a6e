//! One measured run of a shell pipeline under GNU `time` (wall time, peak
//! RSS, what sandcache's `--json` reported), and the tables of them.

use std::process::{Command, Stdio};

/// One measured run: seconds, peak RSS in KiB, bytes moved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) secs: f64,
    pub(crate) rss_kib: u64,
    pub(crate) bytes: u64,
    /// A restore's `files_written` (its `--json`), when it reports one.
    pub(crate) written: u64,
}

/// Runs `script` under `sh -c` and GNU time; `bytes` reads what moved from
/// the command's stdout (sandcache's `--json`) when it reports it.
pub(crate) fn measure(script: &str, cpus: Option<&str>) -> Sample {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "@@ %e %M"]);
    if let Some(c) = cpus {
        cmd.args(["taskset", "-c", c]);
    }
    let out = cmd.args(["sh", "-c", script]).stdin(Stdio::null()).output().expect("run /usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "case failed: {script}\n{stderr}");
    let line = stderr.lines().rev().find(|l| l.starts_with("@@ ")).expect("GNU time output");
    let mut it = line[3..].split_whitespace();
    let secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let rss_kib = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let bytes = json.iter().filter_map(|v| v["transferred"].as_u64()).next_back().unwrap_or(0);
    let written = json.iter().filter_map(|v| v["files_written"].as_u64()).next_back().unwrap_or(0);
    Sample { secs, rss_kib, bytes, written }
}

pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) samples: Vec<Sample>,
    /// Bytes when the command does not report them.
    pub(crate) bytes: Option<u64>,
}

impl Row {
    pub(crate) fn median(&self) -> Sample {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let mut m = s[s.len() / 2];
        m.rss_kib = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        if let Some(b) = self.bytes {
            m.bytes = b;
        }
        m
    }
}

/// A table of `rows`, each with its ratio to the first (`base`).
pub(crate) fn print_table(title: &str, base_name: &str, rows: &[Row]) {
    let base = rows[0].median().secs;
    println!("\n{title}");
    println!("| case | median s | ratio to {base_name} | bytes moved | peak RSS MiB | runs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let m = r.median();
        println!(
            "| {} | {:.3} | {:.2}x | {:.1} MB | {:.0} | {} |",
            r.name,
            m.secs,
            m.secs / base,
            m.bytes as f64 / 1e6,
            m.rss_kib as f64 / 1024.0,
            r.samples.len()
        );
    }
}

pub(crate) fn sh(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().expect("sh");
    assert!(st.success(), "setup failed: {script}");
}

/// Copies into `dir` the files of `extra` that `corpus` lacks, times kept:
/// what Deno adds to a tree that holds `corpus` when the app imports one
/// more package. Every other file keeps the corpus's times, as on a site
/// restored from the corpus.
pub(crate) fn add_package(corpus: &std::path::Path, extra: &std::path::Path, dir: &std::path::Path) {
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    sh(&format!(
        "cd {} && find . -type f | while read f; do [ -e {c}/\"$f\" ] || {{ mkdir -p {d}/\"$(dirname \"$f\")\"; cp -a \"$f\" {d}/\"$f\"; }}; done",
        q(extra),
        c = q(corpus),
        d = q(dir)
    ));
}
