//! Faults on the wire: a loopback HTTP proxy that forwards to a test server (moto, or the
//! Kubernetes test API server) and answers some requests itself with a throttle, a server
//! error, a reset connection or a late answer, the way an overloaded API and a flaky network do.
//!
//! Which requests fail is decided by a seeded counter, not by chance: the n-th eligible request
//! fails when a hash of the seed and n falls under the rate, so a test meets the same faults
//! in the same order every run. Every request the proxy sees is recorded with its body, the
//! fault it met and the status the client got, so tests can count what clients sent, faulted or
//! not.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::Notify;

/// One way a request goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 429 Too Many Requests with `Retry-After`, as API Priority and Fairness or AWS throttling
    /// answer. The server never sees the request.
    Throttle,
    /// 500 Internal Server Error. The server never sees the request.
    InternalError,
    /// 503 Service Unavailable. The server never sees the request.
    Unavailable,
    /// The connection is reset (TCP RST) before the request is forwarded.
    Reset,
    /// The request is forwarded and the server acts on it, then the connection is reset before
    /// the answer reaches the client: the client cannot tell whether its request took effect.
    LostResponse,
    /// The request is forwarded after a pause (see [`Faults::slow_by`]).
    Slow,
}

impl Fault {
    /// Every fault: what the issue calls throttling, server errors, resets and slow answers,
    /// plus a response lost after the server acted.
    pub const ALL: [Fault; 6] = [
        Fault::Throttle,
        Fault::InternalError,
        Fault::Unavailable,
        Fault::Reset,
        Fault::LostResponse,
        Fault::Slow,
    ];
}

/// Which requests fail and how; cheap to clone, and every clone shares the counters.
#[derive(Clone)]
pub struct Faults {
    plan: Arc<Plan>,
}

struct Plan {
    per_mille: u64,
    kinds: Vec<Fault>,
    seed: u64,
    matching: Option<String>,
    at_most: Option<u64>,
    retry_after: Duration,
    delay: Duration,
    eligible: AtomicU64,
    injected: Mutex<BTreeMap<Fault, u64>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("per_mille", &self.plan.per_mille)
            .field("kinds", &self.plan.kinds)
            .field("seed", &self.plan.seed)
            .field("matching", &self.plan.matching)
            .field("at_most", &self.plan.at_most)
            .finish()
    }
}

impl Faults {
    /// `percent` of requests fail, each with one of [`Fault::ALL`], chosen from `seed`.
    pub fn rate(percent: u32, seed: u64) -> Self {
        Self::build(u64::from(percent.min(100)) * 10, Fault::ALL.to_vec(), seed)
    }

    /// No faults: the proxy only records what passes.
    pub fn none() -> Self {
        Self::build(0, Fault::ALL.to_vec(), 0)
    }

    /// Every eligible request fails with `fault` (limit them with [`Faults::at_most`]).
    pub fn always(fault: Fault) -> Self {
        Self::build(1000, vec![fault], 0)
    }

    fn build(per_mille: u64, kinds: Vec<Fault>, seed: u64) -> Self {
        Self {
            plan: Arc::new(Plan {
                per_mille,
                kinds,
                seed,
                matching: None,
                at_most: None,
                retry_after: Duration::from_secs(1),
                delay: Duration::from_millis(300),
                eligible: AtomicU64::new(0),
                injected: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Plan)) -> Self {
        let mut plan = Arc::try_unwrap(self.plan)
            .unwrap_or_else(|_| panic!("configure Faults before cloning them"));
        f(&mut plan);
        Self {
            plan: Arc::new(plan),
        }
    }

    /// Only these kinds of fault.
    pub fn kinds(self, kinds: &[Fault]) -> Self {
        assert!(!kinds.is_empty(), "at least one kind of fault");
        self.with(|p| p.kinds = kinds.to_vec())
    }

    /// Only requests whose method, path, query or body contain `text` are eligible (say
    /// `Action=CompleteLifecycleAction`, or `/eviction`).
    pub fn matching(self, text: &str) -> Self {
        self.with(|p| p.matching = Some(text.to_owned()))
    }

    /// No more than `n` faults in all.
    pub fn at_most(self, n: u64) -> Self {
        self.with(|p| p.at_most = Some(n))
    }

    /// How long a [`Fault::Slow`] answer waits (300 ms unless set).
    pub fn slow_by(self, delay: Duration) -> Self {
        self.with(|p| p.delay = delay)
    }

    /// The `Retry-After` of a [`Fault::Throttle`] (1 s unless set).
    pub fn retry_after(self, after: Duration) -> Self {
        self.with(|p| p.retry_after = after)
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.plan.injected.lock().expect("fault counters").clone()
    }

    /// How many faults were injected so far.
    pub fn total(&self) -> u64 {
        self.injected().values().sum()
    }

    /// The fault for a request described by `text`, if it gets one.
    fn decide(&self, text: &str) -> Option<Fault> {
        let plan = &self.plan;
        if plan.per_mille == 0 {
            return None;
        }
        if plan.matching.as_ref().is_some_and(|m| !text.contains(m)) {
            return None;
        }
        let n = plan.eligible.fetch_add(1, Ordering::SeqCst);
        let hash = splitmix64(plan.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if hash % 1000 >= plan.per_mille {
            return None;
        }
        let mut injected = plan.injected.lock().expect("fault counters");
        if plan
            .at_most
            .is_some_and(|limit| injected.values().sum::<u64>() >= limit)
        {
            return None;
        }
        let fault = plan.kinds[((hash >> 32) % plan.kinds.len() as u64) as usize];
        *injected.entry(fault).or_default() += 1;
        Some(fault)
    }
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What the proxy stands in front of, which decides how its error answers look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// A Kubernetes API server: `Status` bodies.
    Kubernetes,
    /// An AWS endpoint (moto): each service's own error shape (EC2 XML, query XML, JSON).
    Aws,
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Order across every proxy of the process, so requests to moto and to the API server can
    /// be put on one timeline.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The request body, as text.
    pub body: String,
    /// `x-amz-target`, for AWS JSON protocols.
    pub target: Option<String>,
    pub fault: Option<Fault>,
    /// The status the client got; `None` when its connection was reset.
    pub status: Option<u16>,
}

impl Exchange {
    /// The AWS operation: `Action=` of a query request, the `x-amz-target` operation, or
    /// method and path for REST protocols.
    pub fn aws_action(&self) -> String {
        if let Some(target) = &self.target {
            return target.rsplit('.').next().unwrap_or(target).to_owned();
        }
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| format!("{} {}", self.method, self.path))
    }

    /// Whether the server answered with a 2xx status.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

struct Shared {
    upstream: String,
    kind: Upstream,
    faults: Faults,
    client: Client<HttpConnector, Full<Bytes>>,
    log: Mutex<Vec<Exchange>>,
}

/// A running fault proxy on 127.0.0.1; it stops, with its connections, when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (an `http://127.0.0.1:PORT` URL) on a free 127.0.0.1 port.
    pub async fn start(upstream: &str, kind: Upstream, faults: Faults) -> std::io::Result<Self> {
        assert!(
            upstream.starts_with("http://127.0.0.1:"),
            "the fault proxy forwards to loopback only, not to {upstream}"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            kind,
            faults,
            client: Client::builder(TokioExecutor::new()).build_http(),
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The faults this proxy injects.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every request received so far, in order of arrival.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut log = self.shared.log.lock().expect("proxy log").clone();
        log.sort_by_key(|e| e.seq);
        log
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when the proxy is dropped) ends every connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let reset = Arc::new(Notify::new());
        let service = {
            let shared = shared.clone();
            let reset = reset.clone();
            service_fn(move |request| serve(shared.clone(), reset.clone(), request))
        };
        connections.spawn(async move {
            let mut connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = &mut connection => {}
                _ = reset.notified() => {
                    // SO_LINGER 0: closing sends RST instead of FIN.
                    let stream = connection.into_parts().io.into_inner();
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
            }
        });
    }
}

async fn serve(
    shared: Arc<Shared>,
    reset: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let fault = shared
        .faults
        .decide(&format!("{} {path}?{query} {text}", parts.method));
    let mut exchange = Exchange {
        seq: SEQUENCE.fetch_add(1, Ordering::SeqCst),
        method: parts.method.to_string(),
        path,
        query,
        body: text,
        target: parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        fault,
        status: None,
    };

    let answer = match fault {
        Some(Fault::Reset) => None,
        Some(Fault::Throttle | Fault::InternalError | Fault::Unavailable) => Some(fault_answer(
            shared.kind,
            fault.unwrap_or(Fault::InternalError),
            &parts.headers,
            shared.faults.plan.retry_after,
        )),
        Some(Fault::Slow) => {
            tokio::time::sleep(shared.faults.plan.delay).await;
            Some(forward(&shared, &parts, body).await)
        }
        Some(Fault::LostResponse) => {
            let answer = forward(&shared, &parts, body).await;
            exchange.status = Some(answer.status().as_u16());
            shared.log.lock().expect("proxy log").push(exchange);
            reset.notify_one();
            return std::future::pending().await;
        }
        None => Some(forward(&shared, &parts, body).await),
    };
    exchange.status = answer.as_ref().map(|a| a.status().as_u16());
    shared.log.lock().expect("proxy log").push(exchange);
    match answer {
        Some(answer) => Ok(answer),
        None => {
            reset.notify_one();
            std::future::pending().await
        }
    }
}

/// Headers that belong to one connection, not to the message.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

async fn forward(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let uri = format!(
        "{}{}",
        shared.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut request = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    let request = match request.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("fault proxy: {e}")),
    };
    let response = match shared.client.request(request).await {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("fault proxy: {e}")),
    };
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(text.to_owned())));
    *answer.status_mut() = status;
    answer
}

/// The answer a real server of that kind gives for the fault.
fn fault_answer(
    kind: Upstream,
    fault: Fault,
    headers: &HeaderMap,
    retry_after: Duration,
) -> Response<Full<Bytes>> {
    let status = match fault {
        Fault::Throttle => StatusCode::TOO_MANY_REQUESTS,
        Fault::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let seconds = retry_after.as_secs().max(1);
    let (content_type, body, extra) = match kind {
        Upstream::Kubernetes => {
            let (reason, message, details) = match fault {
                Fault::Throttle => (
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                    json!({"retryAfterSeconds": seconds}),
                ),
                Fault::Unavailable => (
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                    json!({}),
                ),
                _ => (
                    "InternalError",
                    "Internal error occurred: the fault proxy failed this request",
                    json!({}),
                ),
            };
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason,
                "details": details, "code": status.as_u16()});
            ("application/json", body.to_string(), None)
        }
        Upstream::Aws => aws_error(fault, headers),
    };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let h = answer.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    if fault == Fault::Throttle
        && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
    {
        h.insert("retry-after", v);
    }
    if let Some(error_type) = extra
        && let Ok(v) = HeaderValue::from_str(error_type)
    {
        h.insert("x-amzn-errortype", v);
    }
    answer
}

/// An AWS error in the protocol of the service the request was signed for.
fn aws_error(fault: Fault, headers: &HeaderMap) -> (&'static str, String, Option<&'static str>) {
    let service = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or_default()
        .to_owned();
    let (code, message) = match (fault, service.as_str()) {
        (Fault::Throttle, "ec2") => ("RequestLimitExceeded", "Request limit exceeded."),
        (Fault::Throttle, "eks") => ("ThrottlingException", "Rate exceeded"),
        (Fault::Throttle, _) => ("Throttling", "Rate exceeded"),
        (Fault::Unavailable, _) => ("ServiceUnavailable", "Service is unavailable."),
        _ => ("InternalFailure", "An internal error occurred."),
    };
    let request_id = uuid::Uuid::new_v4();
    if headers.contains_key("x-amz-target") {
        let body = json!({"__type": code, "message": message}).to_string();
        ("application/x-amz-json-1.0", body, None)
    } else if service == "ec2" {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        );
        ("text/xml", body, None)
    } else if headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        let kind = if fault == Fault::Throttle {
            "Sender"
        } else {
            "Receiver"
        };
        let body = format!(
            "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        );
        ("text/xml", body, None)
    } else {
        let body = json!({"message": message}).to_string();
        ("application/json", body, Some(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_fails_the_same_requests() {
        let pattern = |seed| {
            let faults = Faults::rate(10, seed);
            (0..1000)
                .map(|_| faults.decide("GET /api/v1/nodes"))
                .collect::<Vec<_>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        let failed = pattern(7).iter().filter(|f| f.is_some()).count();
        assert!((70..=130).contains(&failed), "{failed} of 1000 at 10%");
    }

    #[test]
    fn matching_and_at_most_limit_the_faults() {
        let faults = Faults::always(Fault::Unavailable)
            .matching("CompleteLifecycleAction")
            .at_most(2);
        assert_eq!(faults.decide("POST / Action=DescribeInstances"), None);
        for _ in 0..2 {
            assert_eq!(
                faults.decide("POST / Action=CompleteLifecycleAction"),
                Some(Fault::Unavailable)
            );
        }
        assert_eq!(faults.decide("POST / Action=CompleteLifecycleAction"), None);
        assert_eq!(faults.total(), 2);
    }
}
