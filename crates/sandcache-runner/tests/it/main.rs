//! The runner's tests: every endpoint and error path in process, the admin
//! plane and a real Deno site over a socket.

/// The admin plane over a real socket: no admin path or credential
/// reaches the worker.
mod admin;
/// Every endpoint and error path, in process.
mod api;
/// A Deno site deployed cold, then warm from Garage, over a socket.
mod e2e;
/// A hot-first restore under the runner: the worker at hot-ready.
mod hot;
/// Pre-warmed pods: the base in DENO_DIR while idle.
mod prewarm;
/// The deploy body's fuzz seeds, replayed.
mod seeds;

/// A runner config under a test dir, calls to the app in process, a
/// runner served on a loopback port.
mod support;

// The helpers the modules name from here (`crate::x`, `super::x`).
use support::{call, call_with, raw_call, test_config};
