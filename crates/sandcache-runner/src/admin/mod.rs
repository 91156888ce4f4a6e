//! The admin plane: which requests are the runner's, who may make them,
//! and the admin credential, which never reaches the worker.
//!
//! - `namespace.rs`: every reading of a path under `/sandbox`.
//! - `auth.rs`: [`AdminAuth`], the credentials it accepts (a token, a pod
//!   key for short-lived tokens, or neither).
//! - `guard.rs`: the check every admin request passes: a credential when
//!   one is configured, and never the worker, looked up by its exact
//!   connection (`isolation::peer`).
//! - `token.rs`: per-pod, short-lived tokens ([`Key`]).

mod auth;
mod guard;
pub mod namespace;
pub mod token;

pub use auth::AdminAuth;
pub(crate) use guard::guard;
pub use token::Key;
