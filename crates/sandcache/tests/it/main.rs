//! The `sandcache` binary's tests, against the real binary.

/// `delete`, and a bind-mounted DENO_DIR.
mod admin;
/// The admin API on a unix socket, tokenless listeners refused, per-pod
/// tokens from the CLI.
mod adminplane;
/// Exit codes, output, limits, credentials from EKS Pod Identity, a real
/// Deno app restored from Garage with no network, signals.
mod cli;
/// A delta restore killed at random points: units whole, the next restore
/// complete.
mod delta_kill;
/// The deploy files: image, manifests, policies, capabilities.
mod deploy;
/// A hostile site against `serve` run as root, as in production.
mod isolation;
/// `sandcache key`: lockfile keys.
mod lockkey;
/// The runner as operators run it: worker output, exits, signals.
mod operator;
/// Secret hygiene over a full run.
mod secrets;
/// Kills at random points, concurrent writers, a 2 GB cache in bounded
/// memory.
mod soak;

/// The binary, its output, HTTP to `serve`, and `serve` as tests start it.
mod support;

// The helpers the modules name from here (`crate::x`, `super::x`).
use support::{bin, run};
