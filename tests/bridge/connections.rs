//! Bounded HTTP connections on every listener: clients that stall (half a request line,
//! headers without end, a body that never comes, an idle kept-alive connection) are closed
//! within their timeout while `/health` keeps answering, and past the connection cap a new
//! connection is closed at once and counted while those already open go on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sim::stack::{LocalStack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
const BODY_TIMEOUT: Duration = Duration::from_millis(700);
const IDLE_TIMEOUT: Duration = Duration::from_millis(900);
/// How often a condition is looked at while waiting for it.
const POLL: Duration = Duration::from_millis(10);
/// How much later than its timeout a closure may come on a busy test machine.
const MARGIN: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A bridge with its metrics on their own port, and these settings.
async fn stack_with(metrics_port: u16, settings: &[(&str, String)]) -> LocalStack {
    let mut all: HashMap<String, String> = no_busy_callbacks();
    all.insert("METRICS_PORT".into(), metrics_port.to_string());
    all.extend(settings.iter().map(|(k, v)| (k.to_string(), v.clone())));
    LocalStack::start(StackOptions {
        max_calls: 2,
        settings: all,
        ..Default::default()
    })
    .await
    .expect("stack")
}

fn ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// A client that opens a new connection for every request, so that its own connections do not
/// linger in the counts.
fn one_shot_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (EOF, or a reset), at most `limit`; returns
/// how long that took and what was received, or `None` if it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut received))
        .await
        .ok()
        .map(|_eof_or_reset| {
            (
                start.elapsed(),
                String::from_utf8_lossy(&received).into_owned(),
            )
        })
}

/// One sample of the metrics port's `/metrics` (0 when the series is absent).
async fn metric(metrics_port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = one_shot_client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Waits (bounded) until a metric of the metrics port reads `expected`.
async fn wait_for_metric(metrics_port: u16, name: &str, labels: &[(&str, &str)], expected: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(metrics_port, name, labels).await;
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {value}, not {expected}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn health_answers_fast(port: u16) {
    let start = Instant::now();
    let response = one_shot_client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .expect("/health answers");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "/health took {:?}",
        start.elapsed()
    );
}

/// Sends `GET path` on a kept-alive connection and reads the whole response; returns its
/// status line.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bridge\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("a response head"));
    }
    let head = String::from_utf8(head).expect("a text head");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the body");
    head.lines().next().unwrap_or_default().to_owned()
}

fn assert_closed_by_its_timeout(what: &str, closed: Option<(Duration, String)>, timeout: Duration) {
    let (after, _) = closed.unwrap_or_else(|| panic!("{what}: still open"));
    assert!(
        after >= timeout.mul_f32(0.9) && after <= timeout + MARGIN,
        "{what}: closed after {after:?}, timeout {timeout:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_within_their_timeouts_while_health_answers() {
    let metrics_port = free_port();
    let stack = stack_with(
        metrics_port,
        &[
            ("HTTP_HEADER_TIMEOUT", ms(HEADER_TIMEOUT)),
            ("HTTP_BODY_TIMEOUT", ms(BODY_TIMEOUT)),
            ("HTTP_IDLE_TIMEOUT", ms(IDLE_TIMEOUT)),
        ],
    )
    .await;
    let port: u16 = stack
        .bridge_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("bridge port");
    const EACH: usize = 8;
    let requests: [(&str, &[u8]); 4] = [
        ("silent", b""),
        ("half a request line", b"GET /hea"),
        (
            "headers without end",
            b"GET /health HTTP/1.1\r\nHost: bridge\r\nX-Slow: ",
        ),
        (
            "a body that never comes",
            b"POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"object\"",
        ),
    ];
    let mut stalled = Vec::new();
    for (what, sent) in requests {
        for _ in 0..EACH {
            let mut stream = connect(port).await;
            stream.write_all(sent).await.expect("send");
            stalled.push(tokio::spawn(async move {
                let closed = closed_within(&mut stream, WAIT).await;
                (what, closed)
            }));
        }
    }
    // Kept-alive connections that go idle after one request.
    let mut idle = Vec::new();
    for _ in 0..EACH {
        let mut stream = connect(port).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: bridge\r\n\r\n")
            .await
            .expect("send");
        idle.push(tokio::spawn(async move {
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.expect("a response");
            assert_eq!(&head, b"HTTP/1.1 200");
            closed_within(&mut stream, WAIT).await
        }));
    }
    // The metrics listener has the same protection.
    let mut on_metrics_port = connect(metrics_port).await;
    on_metrics_port.write_all(b"GET /metr").await.expect("send");
    let metrics_stalled =
        tokio::spawn(async move { closed_within(&mut on_metrics_port, WAIT).await });

    // While they stall, the bridge answers at once.
    for _ in 0..5 {
        health_answers_fast(port).await;
    }

    for task in stalled {
        let (what, closed) = task.await.expect("reader");
        if what == "a body that never comes" {
            let (_, received) = closed.as_ref().expect("closed");
            assert!(
                received.starts_with("HTTP/1.1 408"),
                "{what}: answered {received:?}"
            );
            assert_closed_by_its_timeout(what, closed, BODY_TIMEOUT);
        } else {
            assert_closed_by_its_timeout(what, closed, HEADER_TIMEOUT);
        }
    }
    for task in idle {
        assert_closed_by_its_timeout("idle", task.await.expect("reader"), IDLE_TIMEOUT);
    }
    assert_closed_by_its_timeout(
        "stalled on the metrics port",
        metrics_stalled.await.expect("reader"),
        HEADER_TIMEOUT,
    );

    let main = ("listener", "main");
    let timeouts = "whatsapp_bridge_http_timeouts_total";
    let header = metric(metrics_port, timeouts, &[main, ("reason", "header")]).await;
    assert_eq!(header, (3 * EACH) as f64);
    let body = metric(metrics_port, timeouts, &[main, ("reason", "body")]).await;
    assert_eq!(body, EACH as f64);
    let idle = metric(metrics_port, timeouts, &[main, ("reason", "idle")]).await;
    assert_eq!(idle, EACH as f64);
    let on_metrics = [("listener", "metrics"), ("reason", "header")];
    assert_eq!(metric(metrics_port, timeouts, &on_metrics).await, 1.0);
    // None left open on the main listener; on the metrics one, the scrape itself.
    let open = "whatsapp_bridge_http_connections_open";
    wait_for_metric(metrics_port, open, &[main], 0.0).await;
    wait_for_metric(metrics_port, open, &[("listener", "metrics")], 1.0).await;
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_new_connection_is_closed_at_once_and_counted_on_each_listener() {
    const CAP: usize = 4;
    let metrics_port = free_port();
    let stack = stack_with(
        metrics_port,
        &[
            ("HTTP_MAX_CONNECTIONS", CAP.to_string()),
            // Long enough that the stalled connections hold their places throughout.
            ("HTTP_HEADER_TIMEOUT", "60s".to_owned()),
        ],
    )
    .await;
    let port: u16 = stack
        .bridge_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("bridge port");
    let open = "whatsapp_bridge_http_connections_open";
    let refused = "whatsapp_bridge_http_connections_refused_total";
    let main = ("listener", "main");
    let metrics = ("listener", "metrics");
    assert_eq!(metric(metrics_port, refused, &[main]).await, 0.0);

    // One connection kept alive (as Meta's are), the others stalled.
    let mut kept_alive = connect(port).await;
    assert_eq!(get_on(&mut kept_alive, "/health").await, "HTTP/1.1 200 OK");
    let mut holding: Vec<TcpStream> = Vec::new();
    for _ in 1..CAP {
        holding.push(connect(port).await);
    }
    wait_for_metric(metrics_port, open, &[main], CAP as f64).await;
    let mut over = connect(port).await;
    let _ = over.write_all(b"GET /health HTTP/1.1\r\n\r\n").await;
    let (after, received) = closed_within(&mut over, Duration::from_secs(2))
        .await
        .expect("the connection past the cap is closed");
    assert!(received.is_empty(), "answered past the cap: {received:?}");
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
    assert_eq!(metric(metrics_port, refused, &[main]).await, 1.0);
    assert_eq!(metric(metrics_port, open, &[main]).await, CAP as f64);
    // The connection already open goes on being served.
    assert_eq!(get_on(&mut kept_alive, "/ready").await, "HTTP/1.1 200 OK");

    // A place frees up: the bridge answers again.
    holding.pop();
    wait_for_metric(metrics_port, open, &[main], (CAP - 1) as f64).await;
    health_answers_fast(port).await;
    holding.clear();

    // The metrics listener: its own cap, here the same.
    for _ in 0..CAP {
        holding.push(connect(metrics_port).await);
    }
    let mut over = connect(metrics_port).await;
    let _ = over.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
    let (after, received) = closed_within(&mut over, Duration::from_secs(2))
        .await
        .expect("the connection past the cap is closed");
    assert!(received.is_empty(), "answered past the cap: {received:?}");
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
    holding.clear();
    // Scraping before the places are free would be refused (and counted): wait on the gauge
    // in the process first.
    let open_on_metrics = stack
        .metrics
        .http_connections_open
        .with_label_values(&["metrics"]);
    let deadline = Instant::now() + WAIT;
    while open_on_metrics.get() > 0 {
        assert!(
            Instant::now() < deadline,
            "the metrics connections stay open"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(metric(metrics_port, refused, &[metrics]).await, 1.0);
    assert_eq!(metric(metrics_port, refused, &[main]).await, 1.0);
    stack.stop().await.expect("stop");
}
