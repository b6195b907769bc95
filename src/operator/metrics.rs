//! Prometheus metrics of the operator, served at `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`super::Error::metric_label`].
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `ConfigMap`, `Deployment`, `Service`, or `WebRTCEgress` for status writes.
    pub kind: String,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Every write to the API server; a steady cluster keeps these flat.
    pub writes: Family<KindLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0]);
        let writes = Family::<KindLabels, Counter>::default();
        let mut registry = Registry::with_prefix("webrtc_egress_operator");
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_failures", "Reconciles failed", failures.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time a reconcile took",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "writes",
            "Objects written to the API server",
            writes.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            writes,
            registry,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn failed(&self, error: &super::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().into(),
            })
            .inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn writes_of(&self, kind: &str) -> u64 {
        self.writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .get()
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let metrics = Metrics::default();
        {
            let _timer = metrics.start_reconcile();
        }
        metrics.wrote("Deployment");
        metrics.failed(&super::super::Error::MissingMetadata("uid"));
        let text = metrics.render();
        for line in [
            "webrtc_egress_operator_reconciles_total 1",
            "webrtc_egress_operator_reconcile_duration_seconds_count 1",
            r#"webrtc_egress_operator_writes_total{kind="Deployment"} 1"#,
            r#"webrtc_egress_operator_reconcile_failures_total{error="missing_metadata"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
