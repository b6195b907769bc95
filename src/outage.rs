//! The API server (or etcd behind it) being away, as the operator and the agents live through
//! it: logged once when it goes and once when it is back, not per retry, and retried with a
//! backoff that stays short enough to converge soon after it returns.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Whether `error` says the API server cannot be reached or cannot serve right now (connection
/// failures, timeouts, 5xx, 429), rather than refusing this one request.
pub fn is_unavailable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::HttpError(_) => true,
        _ => false,
    }
}

/// What a watch error means to whoever runs the watch.
pub enum WatchTrouble {
    /// The resourceVersion it resumes from is gone (410, as after an API server restart): the
    /// watcher lists again by itself. Routine.
    Expired,
    /// The API server is away: part of an outage.
    Unavailable,
    /// Anything else (permissions, a bad request): worth a line each time.
    Other,
}

pub fn classify(error: &watcher::Error) -> WatchTrouble {
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => WatchTrouble::Expired,
        watcher::Error::WatchError(status) if status.code >= 500 || status.code == 429 => {
            WatchTrouble::Unavailable
        }
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e)
            if is_unavailable(e) =>
        {
            WatchTrouble::Unavailable
        }
        _ => WatchTrouble::Other,
    }
}

/// Tracks one process's view of the API server, so an outage costs two log lines.
#[derive(Debug, Default)]
pub struct ApiOutage {
    down_since: Mutex<Option<Instant>>,
}

impl ApiOutage {
    /// A request or watch failed for want of the API server. The first failure of an outage
    /// is a warning; the retries that follow are debug lines.
    pub fn failed(&self, what: &str, error: &dyn Display) {
        let mut down = self.down_since.lock().unwrap();
        if down.is_none() {
            *down = Some(Instant::now());
            warn!(
                "the API server is unavailable ({what}: {error}); \
                 serving on and retrying with backoff, logged again when it is back"
            );
        } else {
            debug!(%error, what, "API server still unavailable");
        }
    }

    /// A request or watch worked: ends an outage, if there was one.
    pub fn recovered(&self) {
        if let Some(since) = self.down_since.lock().unwrap().take() {
            info!(
                after_seconds = since.elapsed().as_secs(),
                "the API server is available again"
            );
        }
    }
}

/// The first retry after a failure.
const MIN_DELAY: Duration = Duration::from_millis(500);
/// Retries never wait longer than this, so that a returning API server is noticed within
/// seconds; a watch or request that works resets the delay.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Exponential backoff from [`MIN_DELAY`] to [`MAX_DELAY`], each delay trimmed by up to a
/// quarter at random so that many pods do not retry in step.
#[derive(Debug, Clone)]
pub struct ApiBackoff {
    next: Duration,
}

impl Default for ApiBackoff {
    fn default() -> Self {
        ApiBackoff { next: MIN_DELAY }
    }
}

impl Iterator for ApiBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        Some(delay.mul_f64(1.0 - rand::random::<f64>() / 4.0))
    }
}

impl Backoff for ApiBackoff {
    fn reset(&mut self) {
        self.next = MIN_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = ApiBackoff::default();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        for (i, d) in delays.iter().enumerate() {
            let full = (MIN_DELAY * 2u32.pow(i as u32)).min(MAX_DELAY);
            assert!(*d <= full && *d >= full.mul_f64(0.75), "{i}: {d:?}");
        }
        assert!(delays[7] >= MAX_DELAY.mul_f64(0.75));
        b.reset();
        assert!(b.next().unwrap() <= MIN_DELAY);
    }

    #[test]
    fn unavailable_means_the_server_not_the_request() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(is_unavailable(&status(503)));
        assert!(is_unavailable(&status(500)));
        assert!(is_unavailable(&status(429)));
        assert!(!is_unavailable(&status(403)));
        assert!(!is_unavailable(&status(404)));
        assert!(!is_unavailable(&status(422)));
    }

    #[tokio::test]
    async fn an_outage_is_one_warning_and_one_recovery() {
        let outage = ApiOutage::default();
        outage.recovered();
        assert!(outage.down_since.lock().unwrap().is_none());
        outage.failed("watch", &"refused");
        let first = *outage.down_since.lock().unwrap();
        outage.failed("watch", &"refused again");
        assert_eq!(
            *outage.down_since.lock().unwrap(),
            first,
            "kept from the first"
        );
        outage.recovered();
        assert!(outage.down_since.lock().unwrap().is_none());
    }
}
