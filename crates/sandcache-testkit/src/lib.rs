//! Test helpers shared by sandcache's crates.
//!
//! * [`tree`]: sample DENO_DIR-like trees and whole-tree comparisons;
//! * [`raw`]: tar streams written byte by byte, for hostile archives;
//! * [`s3`]: the test S3 server from `scripts/dev-s3.sh`;
//! * [`net`]: servers that misbehave (stall after headers...);
//! * [`faults`]: a fault-injecting proxy in front of the test S3 server;
//! * [`throttle`]: a bandwidth-throttled HTTP proxy, for honest cold starts;
//! * [`generations`]: checks that every stored generation is whole;
//! * [`seeds`]: the committed fuzz seeds, replayed through the fuzz checks;
//! * [`sqlite`]: hostile SQLite files (a WAL that claims a huge database);
//! * [`store`]: the store conformance suite, and a wrapper store with hooks;
//! * [`http`]: a plain HTTP/1.1 client, async and blocking;
//! * [`serve`]: `sandcache serve` as a child process;
//! * [`site`]: a site's git repo;
//! * [`deno`]: the Deno binary the tests run (`SANDCACHE_DENO`);
//! * [`ci`]: a variable the tests need: skip without it, fail on CI;
//! * [`wait`]: waiting for a condition, within a bound.

pub mod ci;
pub mod deno;
pub mod faults;
pub mod generations;
pub mod http;
pub mod net;
pub mod raw;
pub mod s3;
pub mod seeds;
pub mod serve;
pub mod site;
pub mod sqlite;
pub mod store;
pub mod throttle;
pub mod tree;
pub mod wait;

pub use throttle::{ThrottleOptions, ThrottledProxy};
pub use wait::wait_for;
