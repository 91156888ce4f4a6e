//! How a deploy, an undeploy or a snapshot request fails.

/// What a deploy failure is, and so which status it gets.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
    /// An undeploy cancelled the deploy.
    #[error("Deploy cancelled")]
    Cancelled,
}
