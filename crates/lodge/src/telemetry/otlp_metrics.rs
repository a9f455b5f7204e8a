//! OTLP export of the daemon's metrics: every `OTEL_METRIC_EXPORT_INTERVAL`
//! the series `GET /metrics` would show are gathered (by the very code a
//! scrape runs, `api::metrics::gather`) and posted to the collector as one
//! `ExportMetricsServiceRequest` over HTTP with a protobuf body.
//!
//! The exposition text is the contract: it is parsed back here and mapped
//! series by series (counters to cumulative monotonic sums named as the
//! text names them, `…_total`; gauges to gauges; histograms to explicit
//! bucket histograms, their cumulative `le` buckets turned into per-bucket
//! counts), so the collector sees exactly the names, labels and values a
//! scrape sees, histograms derived at scrape time included (the
//! OpenTelemetry SDK's instruments have no form for those). prost-build,
//! which prometheus-client's protobuf encoding needs, would have needed
//! `protoc` at build time.
//!
//! The export runs on a task of the daemon's runtime. When the daemon
//! stops it sends one last batch ([`Exporter::finish`]), so what was
//! counted since the previous one is not lost; the wait is bounded by the
//! POST's timeout. The POST has a timeout no longer than the interval; a
//! collector that is down costs the batch and a warning (at most one per
//! [`WARN_EVERY`]), never a stalled request or a failed start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{exporter_list, ExporterList};

/// The export interval when `OTEL_METRIC_EXPORT_INTERVAL` is unset (the
/// spec's default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(60_000);

/// The POST's timeout when no `OTEL_*` timeout is set.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The collector's default OTLP/HTTP address.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/metrics";

/// At most one warning about a failing collector per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(300);

/// Where and how often the metrics go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub endpoint: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
}

/// What the `OTEL_*` variables ask for metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Setting {
    Off,
    Otlp(Export),
    /// Asked for something lodge does not speak: why, for the warning.
    Unsupported(String),
}

/// Reads the settings through `var`; `metrics_on` is `LODGE_METRICS`'
/// answer (off there is off here too).
pub fn setting(var: impl Fn(&str) -> Option<String>, metrics_on: bool) -> Setting {
    let set = |k: &str| {
        var(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if !metrics_on || set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Setting::Off;
    }
    let exporter_otlp = match set("OTEL_METRICS_EXPORTER").as_deref() {
        None => false,
        Some(list) => match exporter_list("OTEL_METRICS_EXPORTER", list, "metrics") {
            ExporterList::None => return Setting::Off,
            ExporterList::Unsupported(why) => return Setting::Unsupported(why),
            ExporterList::Otlp => true,
        },
    };
    let endpoint = if let Some(e) = set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        e
    } else if let Some(base) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
        format!("{}/v1/metrics", base.trim_end_matches('/'))
    } else if exporter_otlp {
        DEFAULT_ENDPOINT.to_owned()
    } else {
        return Setting::Off;
    };
    let protocol =
        set("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        return Setting::Unsupported(format!(
            "OTLP protocol {p}: lodge exports metrics only over http/protobuf"
        ));
    }
    let millis = |k: &str| {
        set(k)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    };
    let interval = millis("OTEL_METRIC_EXPORT_INTERVAL").unwrap_or(DEFAULT_INTERVAL);
    let timeout = millis("OTEL_METRIC_EXPORT_TIMEOUT")
        .or_else(|| millis("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"))
        .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(interval);
    let headers = set("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
        .or_else(|| set("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|h| pairs(&h))
        .unwrap_or_default();
    Setting::Otlp(Export {
        endpoint,
        interval,
        timeout,
        headers,
    })
}

/// `k1=v1,k2=v2` (the `OTEL_*` list form), blanks trimmed and each value
/// percent-decoded as the specification asks (`a%2Cb` is `a,b`); a value
/// that does not decode to UTF-8 is kept as written.
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            let v = v.trim();
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_or_else(|_| v.to_owned(), |d| d.into_owned());
            (!k.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

/// One sample of the text: its name, labels and value as written.
type Sample = (String, Vec<(String, String)>, String);

/// One family of the exposition text.
#[derive(Debug, Default)]
struct Family {
    name: String,
    help: String,
    kind: String,
    /// `(sample name, labels, value)` in the text's order.
    samples: Vec<Sample>,
}

/// Parses Prometheus text format 0.0.4 as `metrics::render` writes it.
fn parse(text: &str) -> Result<Vec<Family>, String> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(Family {
                name: name.to_owned(),
                help: unescape_help(help),
                ..Family::default()
            });
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            match out.last_mut() {
                Some(f) if f.name == name && f.kind.is_empty() => f.kind = kind.to_owned(),
                _ => out.push(Family {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    ..Family::default()
                }),
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = sample(line).ok_or_else(|| format!("unreadable: {line}"))?;
        let family = out
            .last_mut()
            .filter(|f| name.starts_with(&f.name))
            .ok_or_else(|| format!("a sample outside its family: {line}"))?;
        family.samples.push((name, labels, value));
    }
    Ok(out)
}

/// A HELP text as written (`\\` and `\n` escaped) back to itself.
fn unescape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `name{k="v",…} value`, label values unescaped.
fn sample(line: &str) -> Option<Sample> {
    let end = line.find(['{', ' '])?;
    let name = line[..end].to_owned();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.to_owned();
    Some((name, labels, value))
}

fn string_kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
    }
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string_kv(k, v)).collect()
}

fn number(v: &str) -> Option<number_data_point::Value> {
    if let Ok(i) = v.parse::<i64>() {
        return Some(number_data_point::Value::AsInt(i));
    }
    let f = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v.parse::<f64>().ok()?,
    };
    Some(number_data_point::Value::AsDouble(f))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The OTLP metrics of one exposition text, stamped `now`; the cumulative
/// ones started at `start`.
pub fn to_otlp(text: &str, start: SystemTime, now: SystemTime) -> Result<Vec<Metric>, String> {
    let (start, now) = (nanos(start), nanos(now));
    let cumulative = AggregationTemporality::Cumulative as i32;
    let mut out = Vec::new();
    for f in parse(text)? {
        let points = |f: &Family| -> Result<Vec<NumberDataPoint>, String> {
            f.samples
                .iter()
                .map(|(_, labels, v)| {
                    Ok(NumberDataPoint {
                        attributes: attributes(labels),
                        start_time_unix_nano: if f.kind == "counter" { start } else { 0 },
                        time_unix_nano: now,
                        value: Some(number(v).ok_or_else(|| format!("{}: value {v}", f.name))?),
                        ..Default::default()
                    })
                })
                .collect()
        };
        let data = match f.kind.as_str() {
            "counter" => metric::Data::Sum(Sum {
                data_points: points(&f)?,
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
            "histogram" => metric::Data::Histogram(Histogram {
                data_points: histogram_points(&f, start, now)?,
                aggregation_temporality: cumulative,
            }),
            // Gauges, and anything untyped, as gauges.
            _ => metric::Data::Gauge(Gauge {
                data_points: points(&f)?,
            }),
        };
        out.push(Metric {
            name: f.name.clone(),
            description: f.help.clone(),
            data: Some(data),
            ..Default::default()
        });
    }
    Ok(out)
}

/// The histogram's series (one per label set but `le`).
fn histogram_points(f: &Family, start: u64, now: u64) -> Result<Vec<HistogramDataPoint>, String> {
    #[derive(Default)]
    struct Acc {
        sum: Option<f64>,
        count: u64,
        /// `(le, cumulative count)` in the text's order.
        buckets: Vec<(f64, u64)>,
    }
    let bad = |what: &str, v: &str| format!("{}: {what} {v}", f.name);
    let mut by_labels: BTreeMap<Vec<(String, String)>, Acc> = BTreeMap::new();
    let mut order: Vec<Vec<(String, String)>> = Vec::new();
    for (name, labels, v) in &f.samples {
        let suffix = &name[f.name.len()..];
        let mut key = labels.clone();
        let le = key
            .iter()
            .position(|(k, _)| k == "le")
            .map(|i| key.remove(i).1);
        if !by_labels.contains_key(&key) {
            order.push(key.clone());
        }
        let acc = by_labels.entry(key).or_default();
        match suffix {
            "_sum" => acc.sum = Some(v.parse().map_err(|_| bad("sum", v))?),
            "_count" => acc.count = v.parse().map_err(|_| bad("count", v))?,
            "_bucket" => {
                let le = le.ok_or_else(|| bad("bucket without le", v))?;
                let bound = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    b => b.parse().map_err(|_| bad("le", b))?,
                };
                let n = v.parse().map_err(|_| bad("bucket", v))?;
                acc.buckets.push((bound, n));
            }
            _ => return Err(bad("sample", name)),
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some(mut acc) = by_labels.remove(&key) else {
            continue;
        };
        acc.buckets
            .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let mut explicit_bounds = Vec::new();
        let mut bucket_counts = Vec::new();
        let mut below = 0u64;
        for (bound, cumulative) in &acc.buckets {
            if bound.is_finite() {
                explicit_bounds.push(*bound);
            }
            bucket_counts.push(cumulative.saturating_sub(below));
            below = *cumulative;
        }
        if acc.buckets.last().is_none_or(|(b, _)| b.is_finite()) {
            // No +Inf bucket written: what the count holds above the rest.
            bucket_counts.push(acc.count.saturating_sub(below));
        }
        out.push(HistogramDataPoint {
            attributes: attributes(&key),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: acc.count,
            sum: acc.sum,
            bucket_counts,
            explicit_bounds,
            ..Default::default()
        });
    }
    Ok(out)
}

/// The resource: `OTEL_SERVICE_NAME` (else `lodge`), the version, and
/// `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(var: impl Fn(&str) -> Option<String>) -> Resource {
    let mut attrs: Vec<(String, String)> = var("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| pairs(&v))
        .unwrap_or_default();
    let service = var("OTEL_SERVICE_NAME")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            attrs
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "lodge".to_owned());
    attrs.retain(|(k, _)| k != "service.name" && k != "service.version");
    attrs.push(("service.name".to_owned(), service));
    attrs.push((
        "service.version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    ));
    Resource {
        attributes: attributes(&attrs),
        ..Default::default()
    }
}

/// The request for one exposition text.
pub fn request(
    text: &str,
    start: SystemTime,
    now: SystemTime,
    var: impl Fn(&str) -> Option<String>,
) -> Result<ExportMetricsServiceRequest, String> {
    Ok(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(var)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "lodge".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics: to_otlp(text, start, now)?,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// How long past the POST's timeout [`Exporter::finish`] waits at most.
const FINISH_GRACE: Duration = Duration::from_secs(1);

/// The running export.
pub struct Exporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Exporter {
    /// Sends one last batch (what was counted since the previous one) and
    /// ends the export; returns once it went out, failed, or took longer
    /// than the POST's timeout.
    pub async fn finish(self) {
        if self.stop.send(()).is_err() {
            // The export never ran (its client could not be built).
            return;
        }
        if tokio::time::timeout(self.timeout + FINISH_GRACE, self.task)
            .await
            .is_err()
        {
            tracing::warn!("OTLP metric export: the last batch did not go out in time");
        }
    }
}

/// Starts the periodic export on the current runtime: `gather` returns
/// what `GET /metrics` would answer now.
pub fn spawn<G>(export: Export, gather: G) -> Exporter
where
    G: Fn() -> Result<String, String> + Send + 'static,
{
    let start = SystemTime::now();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let timeout = export.timeout;
    let task = tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(export.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "OTLP metric export: building the HTTP client: {e}; metrics are not exported"
                );
                return;
            }
        };
        let mut tick = tokio::time::interval(export.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once; the first export one interval in.
        tick.tick().await;
        let mut last_warning: Option<Instant> = None;
        let mut failing = false;
        loop {
            // A finish (or a dropped handle) asks for the last batch.
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut stopped => true,
            };
            let outcome = match gather().and_then(|text| {
                request(&text, start, SystemTime::now(), |k| std::env::var(k).ok())
            }) {
                Ok(req) => post(&client, &export, prost::Message::encode_to_vec(&req)).await,
                Err(e) => Err(format!("gathering the metrics: {e}")),
            };
            match outcome {
                Ok(()) => {
                    if failing {
                        tracing::info!("OTLP metric export to {} works again", export.endpoint);
                    }
                    failing = false;
                }
                Err(e) => {
                    failing = true;
                    if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(
                            "OTLP metric export to {}: {e}; this batch is dropped (next warning in {}s at the earliest)",
                            export.endpoint,
                            WARN_EVERY.as_secs()
                        );
                    } else {
                        tracing::debug!("OTLP metric export to {}: {e}", export.endpoint);
                    }
                }
            }
            if last {
                return;
            }
        }
    });
    Exporter {
        stop,
        task,
        timeout,
    }
}

async fn post(client: &reqwest::Client, export: &Export, body: Vec<u8>) -> Result<(), String> {
    let mut req = client
        .post(&export.endpoint)
        .header("content-type", "application/x-protobuf");
    for (k, v) in &export.headers {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Setting {
        setting(
            |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            },
            true,
        )
    }

    fn endpoint_of(s: Setting) -> Option<String> {
        match s {
            Setting::Otlp(e) => Some(e.endpoint),
            _ => None,
        }
    }

    #[test]
    fn metric_settings_follow_the_otel_variables() {
        assert_eq!(with(&[]), Setting::Off);
        assert_eq!(with(&[("OTEL_SERVICE_NAME", "x")]), Setting::Off);
        assert_eq!(
            endpoint_of(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])),
            Some("http://c:4318/v1/metrics".into())
        );
        assert_eq!(
            endpoint_of(with(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m/x"),
            ])),
            Some("http://m/x".into())
        );
        assert_eq!(
            endpoint_of(with(&[("OTEL_METRICS_EXPORTER", "otlp")])),
            Some(DEFAULT_ENDPOINT.into())
        );
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(with(&[ep, ("OTEL_METRICS_EXPORTER", "none")]), Setting::Off);
        assert_eq!(with(&[ep, ("OTEL_SDK_DISABLED", "true")]), Setting::Off);
        // Traces off does not turn metrics off.
        assert!(matches!(
            with(&[ep, ("OTEL_TRACES_EXPORTER", "none")]),
            Setting::Otlp(_)
        ));
        assert!(matches!(
            with(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            Setting::Unsupported(_)
        ));
        assert!(matches!(
            with(&[("OTEL_METRICS_EXPORTER", "prometheus")]),
            Setting::Unsupported(_)
        ));
        // LODGE_METRICS=off wins.
        assert_eq!(
            setting(|_| Some("http://c:4318".into()), false),
            Setting::Off
        );
    }

    #[test]
    fn interval_timeout_and_headers() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let Setting::Otlp(e) = with(&[ep]) else {
            panic!("not on")
        };
        assert_eq!(e.interval, DEFAULT_INTERVAL);
        assert_eq!(e.timeout, DEFAULT_TIMEOUT);
        let Setting::Otlp(e) = with(&[
            ep,
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "a=1, b = two,c=x%2Cy%3Dz,d=%FF",
            ),
        ]) else {
            panic!("not on")
        };
        assert_eq!(e.interval, Duration::from_millis(500));
        // Never longer than the interval.
        assert_eq!(e.timeout, Duration::from_millis(500));
        assert_eq!(
            e.headers,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "two".into()),
                // Percent-decoded; not UTF-8 once decoded: as written.
                ("c".into(), "x,y=z".into()),
                ("d".into(), "%FF".into()),
            ]
        );
        let Setting::Otlp(e) = with(&[ep, ("OTEL_METRIC_EXPORT_INTERVAL", "soon")]) else {
            panic!("not on")
        };
        assert_eq!(e.interval, DEFAULT_INTERVAL);
    }

    const TEXT: &str = "\
# HELP lodge_boots_total VM boots started.
# TYPE lodge_boots_total counter
lodge_boots_total 3
# HELP lodge_instances Instances by state.
# TYPE lodge_instances gauge
lodge_instances{state=\"Running\"} 2
lodge_instances{state=\"We \\\"quoted\\\", x\"} 0
# HELP lodge_http_request_duration_seconds Time to the head.
# TYPE lodge_http_request_duration_seconds histogram
lodge_http_request_duration_seconds_sum{kind=\"read\"} 0.75
lodge_http_request_duration_seconds_count{kind=\"read\"} 4
lodge_http_request_duration_seconds_bucket{le=\"0.1\",kind=\"read\"} 1
lodge_http_request_duration_seconds_bucket{le=\"1.0\",kind=\"read\"} 3
lodge_http_request_duration_seconds_bucket{le=\"+Inf\",kind=\"read\"} 4
# EOF
# HELP lodge_daemon_resident_memory_bytes RSS.
# TYPE lodge_daemon_resident_memory_bytes gauge
lodge_daemon_resident_memory_bytes 1234
# EOF
";

    fn labels(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    #[test]
    fn counters_gauges_and_histograms_map_onto_otlp() -> Result<(), String> {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(20);
        let m = to_otlp(TEXT, start, now)?;
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lodge_boots_total",
                "lodge_instances",
                "lodge_http_request_duration_seconds",
                "lodge_daemon_resident_memory_bytes"
            ]
        );
        assert_eq!(m[0].description, "VM boots started.");
        assert_eq!(unescape_help("a\\\\n b\\nc"), "a\\n b\nc");
        let Some(metric::Data::Sum(sum)) = &m[0].data else {
            return Err(format!("{:?}", m[0]));
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 10_000_000_000);
        assert_eq!(sum.data_points[0].time_unix_nano, 20_000_000_000);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
        let Some(metric::Data::Gauge(g)) = &m[1].data else {
            return Err(format!("{:?}", m[1]));
        };
        assert_eq!(
            labels(&g.data_points[0].attributes),
            [("state".to_owned(), "Running".to_owned())]
        );
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        assert_eq!(
            labels(&g.data_points[1].attributes),
            [("state".to_owned(), "We \"quoted\", x".to_owned())]
        );
        let Some(metric::Data::Histogram(h)) = &m[2].data else {
            return Err(format!("{:?}", m[2]));
        };
        assert_eq!(h.data_points.len(), 1);
        let p = &h.data_points[0];
        assert_eq!(
            labels(&p.attributes),
            [("kind".to_owned(), "read".to_owned())]
        );
        assert_eq!(p.count, 4);
        assert_eq!(p.sum, Some(0.75));
        assert_eq!(p.explicit_bounds, [0.1, 1.0]);
        assert_eq!(p.bucket_counts, [1, 2, 1]);
        Ok(())
    }

    #[test]
    fn what_a_render_writes_maps_whole() -> Result<(), String> {
        // The real encoder's text (the events registry of this process).
        let mut registry = prometheus_client::registry::Registry::with_prefix("t");
        let h = prometheus_client::metrics::histogram::Histogram::new([0.5, 2.0]);
        h.observe(1.0);
        registry.register("took_seconds", "Took", h);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .map_err(|e| e.to_string())?;
        let m = to_otlp(&text, SystemTime::UNIX_EPOCH, SystemTime::now())?;
        let Some(metric::Data::Histogram(h)) = &m[0].data else {
            return Err(text);
        };
        assert_eq!(m[0].name, "t_took_seconds");
        assert_eq!(h.data_points[0].explicit_bounds, [0.5, 2.0]);
        assert_eq!(h.data_points[0].bucket_counts, [0, 1, 0]);
        Ok(())
    }
}
