//! The lease guard: stops the replication source at the lease deadline,
//! apart from the runtime loop, so nothing that loop waits for (a hook, a
//! lock, a slow stop) can keep a primary acting past its lease.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long a stopping source may take to finish on its own before it is
/// aborted (its state is crash-safe: unacknowledged keys are resent).
pub(super) const SOURCE_STOP_GRACE: Duration = Duration::from_millis(500);

/// Stops the source at the lease deadline, whatever the runtime loop is
/// waiting for: cancels it and aborts its task. Returns when it fired
/// (true) or the source was stopped otherwise (false).
pub(super) async fn lease_guard(
    epoch: u64,
    mut until: watch::Receiver<Option<Instant>>,
    stop: CancellationToken,
    task: tokio::task::AbortHandle,
) -> bool {
    loop {
        let deadline = *until.borrow_and_update();
        let now = Instant::now();
        match deadline {
            Some(t) if now < t => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    r = until.changed() => if r.is_err() { return false },
                    _ = stop.cancelled() => return false,
                }
            }
            _ => {
                let late_ms = deadline.map_or(0, |t| now.saturating_duration_since(t).as_millis());
                stop.cancel();
                task.abort();
                warn!(
                    epoch,
                    late_ms,
                    "lease deadline reached (or lease released): not acting as primary; the replication source is stopped"
                );
                return true;
            }
        }
    }
}
