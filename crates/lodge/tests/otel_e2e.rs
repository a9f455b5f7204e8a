//! OpenTelemetry traces of the daemon, set by the standard `OTEL_*`
//! variables: a small OTLP/HTTP receiver run here on 127.0.0.1 (the
//! protobuf decoded with `opentelemetry-proto`) sees the spans of a real
//! create (the API request, `instance.create` inside it, the boot), of
//! an exec, a delete and an image pull, under the service name given; and a daemon whose collector
//! refuses connections, or accepts them and never answers, keeps serving
//! at its usual pace and exits promptly on SIGTERM. The same receiver
//! takes `/v1/metrics`: the metrics exported every
//! `OTEL_METRIC_EXPORT_INTERVAL` are the series a `/metrics` scrape of the
//! same daemon shows, with the same values.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, Daemon};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
use prost::Message as _;
use serde_json::json;

/// One span as received, with its resource's service name.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: HashMap<String, String>,
}

fn string_attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            any_value::Value::IntValue(i) => Some((kv.key.clone(), i.to_string())),
            _ => None,
        })
        .collect()
}

fn spans_of(req: &ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let res = rs
            .resource
            .as_ref()
            .map(|r| string_attrs(&r.attributes))
            .unwrap_or_default();
        let service = res.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(Got {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace_id: s.trace_id.clone(),
                    span_id: s.span_id.clone(),
                    parent: s.parent_span_id.clone(),
                    attrs: string_attrs(&s.attributes),
                });
            }
        }
    }
    out
}

/// Answers OTLP/HTTP export requests on one connection (keep-alive):
/// each body is decoded and its spans sent on `tx`, its metrics on `mtx`
/// (nobody listening there is fine).
fn serve_conn(
    stream: TcpStream,
    tx: &mpsc::Sender<Result<Vec<Got>, String>>,
    mtx: &mpsc::Sender<Metrics>,
) {
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut content_type = String::new();
        let mut test_header = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    "x-lodge-test" => test_header = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST /v1/metrics ") {
            let got = if content_type != "application/x-protobuf" {
                Err(format!("unexpected content type {content_type:?}"))
            } else {
                ExportMetricsServiceRequest::decode(body.as_slice())
                    .map_err(|e| format!("undecodable metrics export: {e}"))
            };
            match got {
                Ok(req) => {
                    // A test that does not look at metrics dropped `mrx`.
                    if mtx.send((req, test_header)).is_err() {}
                }
                Err(e) => {
                    if tx.send(Err(e)).is_err() {
                        return;
                    }
                }
            }
        } else {
            let got = if !request_line.starts_with("POST /v1/traces ") {
                Err(format!("unexpected request {request_line:?}"))
            } else if content_type != "application/x-protobuf" {
                Err(format!("unexpected content type {content_type:?}"))
            } else {
                ExportTraceServiceRequest::decode(body.as_slice())
                    .map(|req| spans_of(&req))
                    .map_err(|e| format!("undecodable export: {e}"))
            };
            if tx.send(got).is_err() {
                return;
            }
        }
        // An empty ExportTraceServiceResponse is zero bytes.
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// What the receiver hands over: spans (or why an export was wrong).
type Spans = mpsc::Receiver<Result<Vec<Got>, String>>;

/// A metrics export, with the value of its `x-lodge-test` header if any.
type Metrics = (ExportMetricsServiceRequest, Option<String>);

/// The receiver: its address, the spans and the metric exports as they
/// arrive.
fn receiver() -> (String, Spans, mpsc::Receiver<Metrics>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    let (mtx, mrx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            let mtx = mtx.clone();
            std::thread::spawn(move || serve_conn(conn, &tx, &mtx));
        }
    });
    (format!("http://{addr}"), rx, mrx)
}

/// Receives until `done` holds for everything seen so far.
fn collect_until(
    rx: &mpsc::Receiver<Result<Vec<Got>, String>>,
    seen: &mut Vec<Got>,
    what: &str,
    done: impl Fn(&[Got]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(spans)) => seen.extend(spans),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!(
                "no {what} within 60 s; spans seen: {:?}",
                seen.iter().map(|s| &s.name).collect::<Vec<_>>()
            ),
        }
    }
}

/// Fast batches, so the test waits little.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

#[test]
fn a_create_is_traced_to_the_collector() {
    require_guest!();
    let (endpoint, rx, _metrics) = receiver();
    let d = Daemon::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "lodge-under-test"),
        FAST_EXPORT,
    ]);
    let inst = d.create(json!({
        "name": "traced",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sleep", "60"],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    // An exec: its agent session has a span of its own.
    d.wait_state(&id, "Running", Duration::from_secs(30));
    let exec = d.lodge(&["exec", &id, "true"]);
    assert!(exec.status.success(), "exec: {exec:?}");
    let r = d.api("DELETE", &format!("/instances/{id}"), None);
    assert!(r.status == 204 || r.status == 200, "delete: {}", r.text);
    // A pull (an archive upload, offline): its span outlives the request.
    let archive = d.data_dir.join("t.oci.tar");
    let archive = archive.to_str().expect("utf-8");
    let mk = d.lodge(&[
        "mk-image",
        "--layer",
        &busybox_rootfs(),
        "--name",
        "traced:1",
        "-o",
        archive,
    ]);
    assert!(mk.status.success(), "mk-image: {mk:?}");
    let pull = d.lodge(&["pull", &format!("oci-archive:{archive}")]);
    assert!(pull.status.success(), "pull: {pull:?}");

    let mut seen = Vec::new();
    collect_until(&rx, &mut seen, "create, boot and delete spans", |s| {
        [
            "instance.create",
            "instance.boot",
            "instance.delete",
            "image.pull",
            "instance.exec",
        ]
        .iter()
        .all(|n| s.iter().any(|g| g.name == *n))
            && s.iter()
                .any(|g| g.attrs.get("op").map(String::as_str) == Some("POST /instances"))
    });
    assert!(
        seen.iter().all(|g| g.service == "lodge-under-test"),
        "{seen:?}"
    );
    let by_name = |n: &str| {
        seen.iter()
            .find(|g| g.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let request = seen
        .iter()
        .find(|g| g.attrs.get("op").map(String::as_str) == Some("POST /instances"))
        .cloned()
        .expect("request span");
    let create = by_name("instance.create");
    let boot = by_name("instance.boot");
    // The verb runs inside the request that asked for it, the boot inside
    // the create: one trace.
    assert_eq!(create.parent, request.span_id, "{seen:?}");
    assert_eq!(create.trace_id, request.trace_id);
    assert_eq!(boot.parent, create.span_id, "{seen:?}");
    assert_eq!(create.attrs.get("name").map(String::as_str), Some("traced"));
    assert_eq!(boot.attrs.get("instance"), Some(&id));
    let delete = by_name("instance.delete");
    assert_eq!(delete.attrs.get("instance"), Some(&id));
    let exec = by_name("instance.exec");
    assert_eq!(exec.attrs.get("instance"), Some(&id));
    let pull = by_name("image.pull");
    assert!(
        pull.attrs
            .get("image")
            .is_some_and(|i| i.contains("traced")),
        "{pull:?}"
    );
}

/// A daemon whose collector is gone, or hangs, answers as fast as one
/// with no export at all, and its exit is not held up.
#[test]
fn a_dead_collector_never_stalls_the_daemon() {
    // A port nothing listens on: connections are refused.
    let refused = format!("http://127.0.0.1:{}", common::free_port());
    // A collector that accepts and never reads nor answers.
    let hang = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_url = format!("http://{}", hang.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten().take(64) {
            held.push(c);
        }
    });
    for endpoint in [refused, hang_url] {
        let mut d = Daemon::start_with_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Longer than the whole test: a hung export stays hung.
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "120000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            FAST_EXPORT,
            // Metric exports while the requests run, each one failing.
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ]);
        // Plenty of spans, in batches the exporter cannot deliver; the
        // queue is small so it fills and drops.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for _ in 0..300 {
            let t = Instant::now();
            let r = d.api("GET", "/instances", None);
            assert_eq!(r.status, 200, "{}", r.text);
            slowest = slowest.max(t.elapsed());
        }
        let total = started.elapsed();
        assert!(
            slowest < Duration::from_secs(2),
            "{endpoint}: a request took {slowest:?}"
        );
        assert!(
            total < Duration::from_secs(30),
            "{endpoint}: 300 requests took {total:?}"
        );
        // Requests go on as fast while the metric exports (every 200 ms)
        // fail, for a second past the first failure.
        let log_path = d.data_dir.join("serve.log");
        let phase = Instant::now();
        let mut warned_at: Option<Instant> = None;
        while warned_at.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
            assert!(
                phase.elapsed() < Duration::from_secs(10),
                "{endpoint}: no failed metric export within 10 s"
            );
            let t = Instant::now();
            let r = d.api("GET", "/metrics", None);
            assert_eq!(r.status, 200, "{}", r.text);
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{endpoint}: a scrape took {took:?}"
            );
            if warned_at.is_none()
                && std::fs::read_to_string(&log_path)
                    .is_ok_and(|l| l.contains("OTLP metric export to"))
            {
                warned_at = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SIGTERM: the exit waits for the last export at most briefly.
        let mut child = d.child.take().expect("daemon");
        let t = Instant::now();
        sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint}: the daemon did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{endpoint}: {status:?}");
        eprintln!(
            "{endpoint}: 300 requests in {total:?} (slowest {slowest:?}), exit in {:?}",
            t.elapsed()
        );
        let log = std::fs::read_to_string(d.data_dir.join("serve.log")).expect("log");
        assert!(!log.contains("panicked"), "{log}");
        // The failing metric exports were said once (rate-limited).
        assert_eq!(
            log.matches("OTLP metric export to").count(),
            1,
            "{endpoint}: {log}"
        );
    }
}

fn sigterm(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Every series of one export.
fn all_series(req: &ExportMetricsServiceRequest) -> Vec<(String, String, f64)> {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .flat_map(series_of)
        .collect()
}

/// One exported series: metric name, its labels as `k=v` sorted, value.
fn series_of(m: &Metric) -> Vec<(String, String, f64)> {
    let label_text = |kvs: &[KeyValue]| {
        let mut l: Vec<String> = string_attrs(kvs)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        l.sort();
        l.join(",")
    };
    let num = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    };
    let mut out = Vec::new();
    match &m.data {
        Some(metric::Data::Sum(s)) => {
            assert!(s.is_monotonic, "{}", m.name);
            for p in &s.data_points {
                out.push((m.name.clone(), label_text(&p.attributes), num(&p.value)));
            }
        }
        Some(metric::Data::Gauge(g)) => {
            for p in &g.data_points {
                out.push((m.name.clone(), label_text(&p.attributes), num(&p.value)));
            }
        }
        Some(metric::Data::Histogram(h)) => {
            for p in &h.data_points {
                let name = format!("{}_count", m.name);
                out.push((name, label_text(&p.attributes), p.count as f64));
                assert_eq!(
                    p.bucket_counts.len(),
                    p.explicit_bounds.len() + 1,
                    "{}",
                    m.name
                );
                assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{}", m.name);
            }
        }
        other => panic!("{}: unexpected data {other:?}", m.name),
    }
    out
}

/// The value of one series in a `/metrics` text (`labels` as `k=v`
/// sorted, joined by commas).
fn scraped(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let mut l: Vec<String> = l
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.replace('"', ""))
            .collect();
        l.sort();
        (l.join(",") == labels).then(|| value.parse().ok())?
    })
}

/// What was counted since the last batch is not lost when the daemon
/// stops: SIGTERM sends one last export, long before the next interval.
#[test]
fn the_last_metrics_batch_goes_out_at_exit() {
    let (endpoint, _spans, metrics) = receiver();
    let mut d = Daemon::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_TRACES_EXPORTER", "none"),
        // Far longer than the test: no periodic export happens.
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-lodge-test=a%2Cb"),
    ]);
    const N: usize = 5;
    for _ in 0..N {
        let r = d.api("GET", "/instances", None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(
        metrics.recv_timeout(Duration::from_millis(500)).is_err(),
        "an export before the interval"
    );
    let mut child = d.child.take().expect("daemon");
    sigterm(child.id());
    let (req, header) = metrics
        .recv_timeout(Duration::from_secs(15))
        .expect("the last batch at exit");
    // The header's value was percent-decoded.
    assert_eq!(header.as_deref(), Some("a,b"));
    let series = all_series(&req);
    let route = "method=GET,route=/instances,status=200";
    assert_eq!(
        series
            .iter()
            .find(|(n, l, _)| n == "lodge_http_requests_total" && l == route)
            .map(|s| s.2),
        Some(N as f64),
        "{series:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // Exactly one batch: the last.
    assert!(metrics.recv_timeout(Duration::from_millis(300)).is_err());
    let log = std::fs::read_to_string(d.data_dir.join("serve.log")).expect("log");
    assert!(!log.contains("OTLP metric export to"), "{log}");
}

/// Metrics go out every `OTEL_METRIC_EXPORT_INTERVAL`, named, labelled
/// and valued as a scrape of the same daemon shows them.
#[test]
fn metrics_reach_the_collector_as_scraped() {
    let (endpoint, _spans, metrics) = receiver();
    let d = Daemon::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_SERVICE_NAME", "lodge-metrics"),
    ]);
    const N: usize = 7;
    for _ in 0..N {
        let r = d.api("GET", "/instances", None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let route = "method=GET,route=/instances,status=200";
    // Exports until one has seen the N requests.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (req, series) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (req, _) = metrics
            .recv_timeout(left)
            .expect("a metrics export within 15 s");
        let series = all_series(&req);
        let requests = series
            .iter()
            .find(|(n, l, _)| n == "lodge_http_requests_total" && l == route)
            .map(|s| s.2);
        if requests == Some(N as f64) {
            break (req, series);
        }
    };
    let service = req.resource_metrics[0]
        .resource
        .as_ref()
        .map(|r| string_attrs(&r.attributes))
        .unwrap_or_default();
    assert_eq!(
        service.get("service.name").map(String::as_str),
        Some("lodge-metrics")
    );
    let r = d.api("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text);
    // Every family the scrape names was exported, and no other.
    let mut scraped_names: Vec<&str> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    scraped_names.sort();
    scraped_names.dedup();
    let mut exported_names: Vec<&str> = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    exported_names.sort();
    assert_eq!(exported_names, scraped_names);
    // Values that the scrape did not move are the same on both sides.
    for (name, labels) in [
        ("lodge_http_requests_total", route),
        ("lodge_instances", "state=Running"),
        ("lodge_instances", "state=Stopped"),
        ("lodge_boots_total", ""),
        ("lodge_boot_duration_seconds_count", ""),
        ("lodge_image_pull_bytes_total", ""),
    ] {
        let exported = series
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2);
        let scraped = scraped(&r.text, name, labels);
        assert!(scraped.is_some(), "{name}{{{labels}}} not in\n{}", r.text);
        assert_eq!(exported, scraped, "{name}{{{labels}}}");
    }
}
