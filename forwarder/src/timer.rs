//! The one timer helper the tasks share.

use tokio::time::Instant;

/// Sleeps until `at`, or forever without one: a `select!` branch for an optional deadline.
pub async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
