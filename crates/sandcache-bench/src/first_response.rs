//! Time to first response: from a deploy request to the site's first
//! proxied 200, for a real Deno app of the storefront's packages, cold
//! (every package through a throttled link), warm with everything restored
//! first, and warm hot-first (the worker starts at hot-ready). Warm runs
//! alternate between the two modes; medians and ratios are printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandcache_engine::CacheConfig;
use sandcache_runner::RunnerConfig;
use sandcache_store::StoreSpec;
use sandcache_testkit::throttle::{ThrottleOptions, ThrottledProxy};

use crate::served::{Served, TOKEN, cores, cpu_ticks, cpu_used, deploy_to_first_200, median, status, undeploy};
use serde_json::json;

/// The storefront's server: the corpus's 26 packages
/// (`shared/corpus/storefront.ts`, the same pins), all loaded at startup
/// as an SSR storefront's dev server does (sharp's native image library
/// and the TypeScript compiler included), then one route. A cold start
/// fetches 212 npm package versions; the DENO_DIR is about 260 MB in 23k
/// files, the mission's storefront.
const APP: &str = r#"import { h, render } from "npm:preact@10.29.8";
import renderToString from "npm:preact-render-to-string@6.8.2";
import { GetObjectCommand, S3Client } from "npm:@aws-sdk/client-s3@3.1175.0";
import { DynamoDBClient } from "npm:@aws-sdk/client-dynamodb@3.1169.0";
import { Hono } from "npm:hono@4.13.19";
import { z } from "npm:zod@3.25.76";
import ts from "npm:typescript@5.9.3";
import * as esbuild from "npm:esbuild@0.24.2";
import _ from "npm:lodash@4.18.1";
import { format } from "npm:date-fns@4.4.0";
import { trace } from "npm:@opentelemetry/api@1.10.0";
import { NodeSDK } from "npm:@opentelemetry/sdk-node@0.57.2";
import React from "npm:react@18.3.1";
import { renderToString as reactRender } from "npm:react-dom@18.3.1/server";
import { Observable } from "npm:rxjs@7.8.2";
import Ajv from "npm:ajv@8.20.0";
import axios from "npm:axios@1.21.1";
import pg from "npm:pg@8.23.1";
import Redis from "npm:ioredis@5.11.1";
import { buildSchema, graphql } from "npm:graphql@16.15.0";
import Stripe from "npm:stripe@17.7.0";
import sharp from "npm:sharp@0.33.5";
import { marked } from "npm:marked@15.0.12";
import dayjs from "npm:dayjs@1.11.23";
import { v4 as uuid } from "npm:uuid@11.1.1";
import jwt from "npm:jsonwebtoken@9.0.3";

const loaded = [render, S3Client, GetObjectCommand, DynamoDBClient, z, ts.version, esbuild.version, _, format,
  trace, NodeSDK, Observable, Ajv, axios, pg, Redis, graphql, buildSchema, Stripe, sharp, dayjs, uuid, jwt].length;
const app = new Hono();
app.get("/", (c) => c.html(renderToString(h("p", null, `ok ${loaded} ${marked("**hi**")}`)) +
  reactRender(React.createElement("i", null, format(new Date(0), "yyyy")))));
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: "127.0.0.1" }, app.fetch);
"#;

pub struct Options {
    pub deno: PathBuf,
    pub store: String,
    /// An S3 store's link, in bytes per second (0: loopback as it is).
    pub store_bps: u64,
    pub runs: usize,
    pub roots: Vec<(&'static str, PathBuf)>,
}

pub async fn run(o: Options) {
    let throttle = ThrottleOptions::from_env();
    let proxy = ThrottledProxy::start(throttle).await.expect("throttled proxy");
    eprintln!(
        "first response: registry through a throttled proxy ({:.0} MB/s shared, {} ms per connect)",
        throttle.bytes_per_sec as f64 / 1e6,
        throttle.connect_delay.as_millis()
    );
    let tag = format!("fr-{}", std::process::id());
    for (fs_name, root) in &o.roots {
        let root = root.join(&tag);
        let repo = root.join("repo");
        sandcache_testkit::site::repo(&repo, &[("main.ts", APP)], None);
        let mut store: StoreSpec = o.store.parse().expect("a store spec");
        let mut _link = None;
        if let StoreSpec::S3(s3) = &mut store {
            s3.endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            s3.region = std::env::var("AWS_REGION").unwrap_or_else(|_| sandcache_store::S3Spec::DEFAULT_REGION.into());
            if let (Some(endpoint), true) = (&s3.endpoint, o.store_bps > 0) {
                // The pod's link to its object store: throttled per
                // connection (S3 serves each at its own speed), 2 ms per
                // connection, not loopback.
                let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
                let opts = ThrottleOptions {
                    bytes_per_sec: o.store_bps,
                    connect_delay: Duration::from_millis(2),
                    per_connection: true,
                    ..Default::default()
                };
                let link = ThrottledProxy::relay_to(&hostport, opts).await.expect("store link");
                s3.endpoint = Some(link.url());
                _link = Some(link);
            }
        }
        let key = format!("{tag}/{fs_name}/storefront");
        let config = |hot_first: bool| RunnerConfig {
            deno_dir: root.join("deno-dir"),
            work_dir: root.join("site"),
            state_dir: root.join("state"),
            cache_defaults: CacheConfig { store: Some(store.clone()), key: Some(key.clone()) },
            runner_env: std::env::vars().collect(),
            settle: Duration::from_secs(2),
            settle_poll: Duration::from_millis(250),
            port_timeout: Duration::from_secs(240),
            hot_first,
            admin: sandcache_runner::AdminAuth { token: Some(TOKEN.into()), ..Default::default() },
            ..RunnerConfig::default()
        };
        let body = json!({
            "site": "storefront",
            "repo": format!("file://{}", repo.display()),
            "runCommand": [o.deno.display().to_string(), "run", "-A", "main.ts"],
            // No update check: with no `latest.txt` in the DENO_DIR, Deno
            // asks dl.deno.land for its newest version at startup, a
            // connection through the throttle that fails here (no internet)
            // and lands in one mode's runs or the other's by timing.
            "envs": {"HTTPS_PROXY": proxy.url(), "HTTP_PROXY": proxy.url(), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"},
        });

        // Cold: nothing stored; every package through the throttle. The
        // deps-ready snapshot then records what Deno read: the hot set.
        let cold_runner = Served::start(config(true)).await;
        let bytes_before = proxy.bytes();
        let (cold, st) = deploy_to_first_200(&cold_runner, &body).await;
        assert_eq!(st["cache"]["restore"]["reason"], "not_found", "{st}");
        let bytes_cold = proxy.bytes() - bytes_before;
        let start = Instant::now();
        while status(cold_runner.addr).await["cache"]["snapshot"]["ok"] != true {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "no deps-ready snapshot: {}",
                status(cold_runner.addr).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        undeploy(&cold_runner).await;
        cold_runner.stop().await;

        // Warm: alternating, the dir lost between runs (undeploy empties it).
        let all_first = Served::start(config(false)).await;
        let hot_first = Served::start(config(true)).await;
        let (mut t_all, mut t_hot, mut hot_ratio, mut boots) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_all, mut cpu_hot) = (Vec::new(), Vec::new());
        let n = cores();
        // One unmeasured warm run first: a cold boot reads other files than
        // a warm one (it had just written them), and the first warm run's
        // snapshot records the warm boot's hot set, as in production.
        for s in [&hot_first, &all_first] {
            let _ = deploy_to_first_200(s, &body).await;
            undeploy(s).await;
        }
        let connects_before = proxy.connects();
        for _ in 0..o.runs {
            for (s, out, cpu) in [(&all_first, &mut t_all, &mut cpu_all), (&hot_first, &mut t_hot, &mut cpu_hot)] {
                let before = proxy.connects();
                let ticks = cpu_ticks();
                let (t, st) = deploy_to_first_200(s, &body).await;
                cpu.extend(cpu_used(ticks, cpu_ticks(), t, n));
                assert_eq!(st["cache"]["restore"]["ok"], true, "{st}");
                out.push(t);
                eprintln!(
                    "  {:.3} s: restore {} ms (hot {}), timings {}, restarts {}, registry connections {}",
                    t,
                    st["cache"]["restore"]["ms"],
                    st["cache"]["restore"]["hot_ms"],
                    st["timings"],
                    st["worker_restarts"],
                    proxy.connects() - before
                );
                let r = &st["cache"]["restore"];
                if let (Some(h), Some(ms)) = (r["hot_ms"].as_f64(), r["ms"].as_f64()) {
                    // The tail may still land at the first 200 only with
                    // --serve-during-tail; here it has.
                    hot_ratio.push(h / ms);
                }
                if let Some(b) = st["timings"]["boot_ms"].as_f64() {
                    boots.push(b / 1000.0);
                }
                undeploy(s).await;
            }
        }
        let warm_connects = proxy.connects() - connects_before;
        all_first.stop().await;
        hot_first.stop().await;

        let (m_all, m_hot) = (median(&t_all), median(&t_hot));
        let link = match o.store_bps {
            0 => "as it is".to_owned(),
            bps => format!("{:.0} MB/s", bps as f64 / 1e6),
        };
        println!(
            "\nTime to first response onto {fs_name} ({}), Deno storefront; store {} (link {link})",
            root.display(),
            o.store
        );
        // The machine's CPU over each run (all processes: the runner, the
        // store when it is local, Deno): how busy, and how many CPU seconds.
        let cpu = |v: &[(f64, f64)]| match v.is_empty() {
            true => (f64::NAN, f64::NAN),
            false => {
                (median(&v.iter().map(|c| c.0).collect::<Vec<_>>()), median(&v.iter().map(|c| c.1).collect::<Vec<_>>()))
            }
        };
        let ((busy_all, cs_all), (busy_hot, cs_hot)) = (cpu(&cpu_all), cpu(&cpu_hot));
        println!("| case | median s to first 200 | ratio to warm (all first) | machine busy | CPU s | runs |");
        println!("|---|---:|---:|---:|---:|---:|");
        println!("| cold (registry through the throttle) | {cold:.3} | {:.2}x | | | 1 |", cold / m_all);
        println!(
            "| warm, everything restored first | {m_all:.3} | 1.00x | {:.0}% | {cs_all:.2} | {} |",
            busy_all * 100.0,
            t_all.len()
        );
        println!(
            "| warm, hot-first | {m_hot:.3} | {:.2}x | {:.0}% | {cs_hot:.2} | {} |",
            m_hot / m_all,
            busy_hot * 100.0,
            t_hot.len()
        );
        println!(
            "CPU floor of a hot-first deploy on {n} cores: {:.3} s ({cs_hot:.2} CPU s / {n}) = {:.2}x warm: no scheduling makes it faster than that",
            cs_hot / n as f64,
            cs_hot / n as f64 / m_all
        );
        println!(
            "hot-first / warm: {:.2} (target <= 0.75); cold / warm: {:.1} (target >= 5); hot_ms / ms: {:.2} (median); worker boot: {:.3} s (median); cold moved {:.1} MB through the proxy; warm runs opened {warm_connects} registry connections",
            m_hot / m_all,
            cold / m_all,
            if hot_ratio.is_empty() { f64::NAN } else { median(&hot_ratio) },
            if boots.is_empty() { f64::NAN } else { median(&boots) },
            bytes_cold as f64 / 1e6,
        );
        crate::prewarmed::measure(&crate::prewarmed::Prewarmed {
            fs_name,
            root: &root,
            store: &store,
            base: &key,
            storefront: APP,
            body: &body,
            config: &config,
            runs: o.runs,
        })
        .await;
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Where the benchmark puts its dirs, by filesystem.
pub fn roots(tmpfs: &Path, disk: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![("tmpfs", tmpfs.to_owned()), ("disk", disk.to_owned())]
}
