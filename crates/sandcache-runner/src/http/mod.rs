//! The HTTP side of the runner: each listener's routes (`routes.rs`),
//! their handlers (`handlers.rs`), and the seed's error shape
//! (`error.rs`), which the proxy and the admin guard answer with too.

mod error;
mod handlers;
mod routes;

pub(crate) use error::json_error;
pub use routes::{admin_app, app, metrics_app};
