//! systemd notifications for `Type=notify` units: `READY=1` once the
//! listeners serve, `STOPPING=1` when shutdown begins, and `WATCHDOG=1`
//! every half `WatchdogSec` while the service's main loop runs. Without
//! `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

#[derive(Debug, Default)]
struct Inner {
    /// `$NOTIFY_SOCKET` is set.
    enabled: bool,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    /// A failed send is logged once.
    failed: std::sync::atomic::AtomicBool,
}

/// Sends the service's state to systemd. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier(Arc<Inner>);

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog_every = if enabled {
            sd_notify::watchdog_enabled().map(|d| d / 2)
        } else {
            None
        };
        if let Some(every) = watchdog_every {
            debug!(?every, "systemd watchdog on");
        }
        Notifier(Arc::new(Inner {
            enabled,
            watchdog_every,
            ..Default::default()
        }))
    }

    /// Sends nothing (tests, or not under systemd).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// How often the main loop should call [`Notifier::alive`]: half the
    /// watchdog timeout, or `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.0.watchdog_every
    }

    fn send(&self, state: sd_notify::NotifyState<'_>) {
        if !self.0.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(&[state]) {
            if !self
                .0
                .failed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            }
        }
    }

    /// `READY=1`: the listeners serve.
    pub fn ready(&self) {
        self.send(sd_notify::NotifyState::Ready);
    }

    /// `STOPPING=1`: shutdown begins.
    pub fn stopping(&self) {
        self.send(sd_notify::NotifyState::Stopping);
    }

    /// `WATCHDOG=1`, at most once per [`Notifier::watchdog_every`]: call it
    /// from the main loop, only while the service works.
    pub fn alive(&self) {
        let Some(every) = self.0.watchdog_every else {
            return;
        };
        let mut last = self.0.last_ping.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        self.send(sd_notify::NotifyState::Watchdog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_notify_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier::disabled();
        assert_eq!(n.watchdog_every(), None);
        n.ready();
        n.alive();
        n.stopping();
    }
}
