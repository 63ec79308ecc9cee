//! Prometheus metrics: the HTTP endpoint (`[agent] metrics_listen`, `GET /metrics`, the
//! Prometheus text format) and the histograms the agent keeps between scrapes. Each scrape
//! asks the owner loop for an exposition built from its state at that moment (`agent`'s
//! `metrics` module), so a scrape never reads half-updated state.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Histogram, HistogramOpts};
use tokio::sync::{mpsc, oneshot};

/// What the agent measures over time (the rest is read at each scrape).
#[derive(Clone)]
pub struct Histograms {
    /// One plan-and-apply pass (a batch of events, a CLI change, a reload).
    pub plan_apply: Histogram,
    /// From a kernel event's arrival to the map writes it caused being done.
    pub event_to_map: Histogram,
}

const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

impl Histograms {
    pub fn new() -> Self {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .unwrap_or_else(|e| unreachable!("constant histogram options: {e}"))
        };
        Self {
            plan_apply: histogram(
                "forwarder_plan_apply_duration_seconds",
                "Time of one plan-and-apply pass (a batch of events, a CLI change, a reload).",
            ),
            event_to_map: histogram(
                "forwarder_event_to_map_seconds",
                "Time from a link or neighbour event's arrival to the map writes it caused.",
            ),
        }
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

/// A scrape: the owner answers on the channel with the exposition.
pub type Scrape = oneshot::Sender<String>;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A connection that sends nothing useful for this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `addr` until the task is dropped; each scrape goes to `owner`.
pub async fn serve(listener: tokio::net::TcpListener, owner: mpsc::Sender<Scrape>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let owner = owner.clone();
                async move { Ok::<_, Infallible>(answer(&request, &owner).await) }
            });
            let served = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "metrics connection");
            }
        });
    }
}

async fn answer(
    request: &Request<hyper::body::Incoming>,
    owner: &mpsc::Sender<Scrape>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, v);
        }
        response
    };
    if request.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "the metrics are at /metrics\n".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if owner.send(tx).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping\n".into(),
        );
    }
    match rx.await {
        Ok(text) => reply(StatusCode::OK, text),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping\n".into(),
        ),
    }
}

/// Binds the metrics endpoint.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}
