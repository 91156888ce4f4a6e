//! The seed's error shape, `{"error": "..."}`, for every error the runner
//! answers itself.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The seed's error shape: `{"error": "..."}`.
pub(crate) fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

/// An error with the seed's message and, for operators, what happened.
pub(crate) fn json_error_detail(status: StatusCode, msg: &str, detail: &str) -> Response {
    (status, axum::Json(json!({ "error": msg, "detail": detail }))).into_response()
}
