//! OpenTelemetry trace export of the daemon, set by the standard `OTEL_*`
//! variables and off unless they ask for it.
//!
//! The daemon's spans are its `tracing` spans (the API request span opened
//! by `metrics::track`, the lifecycle verbs' spans in `instances/`, the
//! image store's `image.pull`), handed to OpenTelemetry by a
//! `tracing-opentelemetry` layer beside the log layer; only lodge's own
//! spans at INFO and above go out, so the exporter's own HTTP client never
//! traces itself.
//!
//! Export is OTLP over HTTP with protobuf bodies (`http/protobuf`, the
//! collector's port 4318): no gRPC stack in the binary. The batch
//! processor runs on a thread of its own with a bounded queue, and the
//! blocking HTTP client lives on that thread; a collector that is down or
//! slow costs dropped spans, never a stalled request or a failed start.
//!
//! Settings read (the SDK reads the rest itself: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`):
//!
//! - `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`: off;
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended): on;
//! - `OTEL_TRACES_EXPORTER=otlp` with no endpoint: on, to the default
//!   `http://localhost:4318`;
//! - any other exporter, or a protocol other than `http/protobuf`: a
//!   warning, and no export (never a refused start).
//!
//! The metrics of `GET /metrics` go out over OTLP too, on their own
//! settings (`OTEL_METRICS_EXPORTER`, `OTEL_EXPORTER_OTLP_METRICS_*`,
//! `OTEL_METRIC_EXPORT_INTERVAL`): see [`otlp_metrics`].

pub mod otlp_metrics;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// How long the daemon's exit waits for the last spans to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the `OTEL_*` variables ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Setting {
    /// No export (the default).
    Off,
    /// OTLP/HTTP export; the SDK resolves the endpoint from the variables.
    Otlp,
    /// Asked for something lodge does not speak: why, for the warning.
    Unsupported(String),
}

/// What an `OTEL_<SIGNAL>_EXPORTER` list asks of lodge, which has one
/// exporter (the spec allows a list).
pub(crate) enum ExporterList {
    /// Only `none`.
    None,
    /// `otlp` among them.
    Otlp,
    /// No `otlp`: why, for the warning.
    Unsupported(String),
}

/// Reads the list in `var` (its value `list`) for `signal`.
pub(crate) fn exporter_list(var: &str, list: &str, signal: &str) -> ExporterList {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.iter().all(|n| *n == "none") {
        ExporterList::None
    } else if names.contains(&"otlp") {
        ExporterList::Otlp
    } else {
        ExporterList::Unsupported(format!(
            "{var}={list}: lodge exports {signal} only with otlp"
        ))
    }
}

/// Reads the settings through `var` (the environment, or a test's map).
pub fn setting(var: impl Fn(&str) -> Option<String>) -> Setting {
    let set = |k: &str| {
        var(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Setting::Off;
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    let wanted = match set("OTEL_TRACES_EXPORTER").as_deref() {
        None => endpoint,
        Some(list) => match exporter_list("OTEL_TRACES_EXPORTER", list, "traces") {
            ExporterList::None => return Setting::Off,
            ExporterList::Unsupported(why) => return Setting::Unsupported(why),
            ExporterList::Otlp => true,
        },
    };
    if !wanted {
        return Setting::Off;
    }
    let protocol =
        set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("http/protobuf") => Setting::Otlp,
        Some(p) => Setting::Unsupported(format!(
            "OTLP protocol {p}: lodge exports traces only over http/protobuf"
        )),
    }
}

/// The running export; [`Telemetry::shutdown`] flushes it at exit.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Builds the export when the environment asks for it, and the layer
/// that feeds it; `None` when off (a warning was logged when the settings
/// could not be followed, once logging is up: see [`Pending`]).
pub fn from_env() -> (Option<Telemetry>, Option<Pending>) {
    match setting(|k| std::env::var(k).ok()) {
        Setting::Off => (None, None),
        Setting::Unsupported(why) => (None, Some(Pending::Warn(why))),
        Setting::Otlp => match build() {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(Pending::Warn(format!("OTLP trace export: {e}")))),
        },
    }
}

/// A message for the log, written once the log exists.
pub enum Pending {
    Warn(String),
}

impl Pending {
    pub fn log(self) {
        match self {
            Pending::Warn(m) => tracing::warn!("{m}; traces are not exported"),
        }
    }
}

fn build() -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("lodge");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// The `tracing` layer that turns lodge's spans into exported ones.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        let tracer = self.provider.tracer("lodge");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("lodge", tracing::Level::INFO)
                    .with_target("lodge_images", tracing::Level::INFO),
            )
    }

    /// Sends what is queued, waiting at most [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!("flushing traces at exit: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Setting {
        setting(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_unless_asked() {
        assert_eq!(with(&[]), Setting::Off);
        assert_eq!(with(&[("OTEL_SERVICE_NAME", "x")]), Setting::Off);
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), Setting::Off);
    }

    #[test]
    fn an_endpoint_or_otlp_turns_it_on() {
        let on = [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")],
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/v1/traces")],
            vec![("OTEL_TRACES_EXPORTER", "otlp")],
            vec![("OTEL_TRACES_EXPORTER", "console, otlp")],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        ];
        for pairs in on {
            assert_eq!(with(&pairs), Setting::Otlp, "{pairs:?}");
        }
    }

    #[test]
    fn none_and_disabled_win() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(with(&[ep, ("OTEL_TRACES_EXPORTER", "none")]), Setting::Off);
        assert_eq!(with(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]), Setting::Off);
    }

    #[test]
    fn what_lodge_cannot_do_is_said() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        for pairs in [
            vec![ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            vec![ep, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
            vec![("OTEL_TRACES_EXPORTER", "zipkin")],
        ] {
            assert!(matches!(with(&pairs), Setting::Unsupported(_)), "{pairs:?}");
        }
    }
}
