//! A Lambda Runtime API server on 127.0.0.1, so a function binary runs in a test as it runs in
//! Lambda: it polls for the next invocation, answers with a response or an error, or reports an
//! init error; the test queues events and reads the answers.
//!
//! Only the endpoints the Rust runtime uses are served; their shape follows
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The region of the function's ARN and of the AWS settings given to the process.
const REGION: &str = "us-east-1";

/// What an invocation came to: the function's response, or the error body Lambda would return.
pub type InvocationOutcome = Result<Value, Value>;

/// An event waiting for the function to ask for it.
struct Invocation {
    request_id: String,
    deadline: SystemTime,
    payload: Value,
}

struct Shared {
    function_arn: String,
    queued: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<InvocationOutcome>>>,
    init_error: watch::Sender<Option<Value>>,
    next_requests: AtomicUsize,
}

/// The Runtime API of one function; the server stops when this is dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    function_name: String,
    queue: mpsc::UnboundedSender<Invocation>,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    /// Starts the server for a function named `function_name` on a free 127.0.0.1 port.
    pub async fn start(function_name: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (queue, queued) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:{REGION}:123456789012:function:{function_name}"),
            queued: tokio::sync::Mutex::new(queued),
            waiting: Mutex::new(HashMap::new()),
            init_error: watch::Sender::new(None),
            next_requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/response",
                post(response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            function_name: function_name.to_owned(),
            queue,
            shared,
            server,
        })
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`: `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Queues `event` and waits for the function's answer. The function's deadline is `timeout`
    /// after this call; an invocation still open then ends with a `Sandbox.Timedout` error, and
    /// one open when the function reports an init error ends with that error.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> InvocationOutcome {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (answer, answered) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .expect("runtime API state")
            .insert(request_id.clone(), answer);
        let mut init_error = self.shared.init_error.subscribe();
        let invocation = Invocation {
            request_id: request_id.clone(),
            deadline: SystemTime::now() + timeout,
            payload: event,
        };
        if self.queue.send(invocation).is_err() {
            return Err(unavailable("the runtime API server stopped"));
        }

        let outcome = tokio::select! {
            answered = answered => {
                answered.unwrap_or_else(|_| Err(unavailable("the invocation was dropped")))
            }
            reported = init_error.wait_for(Option::is_some) => match reported {
                Ok(body) => Err(body.clone().unwrap_or_default()),
                Err(_) => Err(unavailable("the runtime API server stopped")),
            },
            _ = tokio::time::sleep(timeout) => Err(timed_out(timeout)),
        };
        self.shared
            .waiting
            .lock()
            .expect("runtime API state")
            .remove(&request_id);
        outcome
    }

    /// The body of the init error the function reported, waiting up to `timeout` for one.
    pub async fn init_error(&self, timeout: Duration) -> Option<Value> {
        let mut reported = self.shared.init_error.subscribe();
        let body = tokio::time::timeout(timeout, reported.wait_for(Option::is_some)).await;
        match body {
            Ok(Ok(body)) => body.clone(),
            _ => None,
        }
    }

    /// How many times the function has asked for the next invocation.
    pub fn next_requests(&self) -> usize {
        self.shared.next_requests.load(Ordering::SeqCst)
    }

    /// A command for a function binary served by this API. The environment is emptied, then
    /// holds what Lambda sets for a function and AWS settings that reach only moto on
    /// 127.0.0.1: its endpoint, fake credentials, no profile files, no instance metadata.
    pub fn command(&self, binary: impl AsRef<OsStr>) -> tokio::process::Command {
        let name = &self.function_name;
        let mut command = tokio::process::Command::new(binary);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", self.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test/[$LATEST]0")
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_rust")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ENDPOINT_URL", crate::aws::endpoint())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Coverage tools tell instrumented children where to write through this variable.
        if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
            command.env("LLVM_PROFILE_FILE", profile);
        }
        command
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The credentials of `sdk` (say, the test world's moto account) as the variables a function
/// process reads: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when there is one,
/// `AWS_SESSION_TOKEN`.
pub async fn credential_vars(sdk: &SdkConfig) -> Vec<(&'static str, String)> {
    let provider = sdk
        .credentials_provider()
        .expect("the SDK configuration has a credentials provider");
    let credentials = provider
        .provide_credentials()
        .await
        .expect("credentials of the test account");
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", credentials.access_key_id().to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            credentials.secret_access_key().to_owned(),
        ),
    ];
    if let Some(token) = credentials.session_token() {
        vars.push(("AWS_SESSION_TOKEN", token.to_owned()));
    }
    vars
}

/// A running function binary whose stdout and stderr go to a file the test can read; the
/// process is killed and the file removed when this is dropped.
pub struct FunctionProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl FunctionProcess {
    /// Starts `command` (made by [`RuntimeApi::command`]).
    pub fn spawn(mut command: tokio::process::Command) -> std::io::Result<Self> {
        let log =
            std::env::temp_dir().join(format!("eks-remedy-function-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log)?;
        command
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = command.spawn()?;
        Ok(Self { child, log })
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for the output to contain `needle`.
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` when it still runs.
    pub async fn exit_status(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    shared.next_requests.fetch_add(1, Ordering::SeqCst);

    // Long poll: the function's request stays open until a test queues an event.
    let invocation = shared.queued.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };

    let deadline_ms = invocation
        .deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("content-type", "application/json".to_owned());
    set("lambda-runtime-aws-request-id", invocation.request_id);
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        shared.function_arn.clone(),
    );
    set("lambda-runtime-trace-id", trace_id());
    (headers, invocation.payload.to_string()).into_response()
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> Response {
    answer(&shared, &request_id, Ok(json_body(&body)))
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> Response {
    answer(&shared, &request_id, Err(json_body(&body)))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.init_error.send_replace(Some(json_body(&body)));
    (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
}

fn answer(shared: &Shared, request_id: &str, outcome: InvocationOutcome) -> Response {
    let waiting = shared
        .waiting
        .lock()
        .expect("runtime API state")
        .remove(request_id);
    match waiting {
        Some(waiting) => {
            let _ = waiting.send(outcome);
            (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            r#"{"errorType":"InvalidRequestID","errorMessage":"no open invocation has this id"}"#,
        )
            .into_response(),
    }
}

fn unavailable(why: &str) -> Value {
    json!({"errorType": "Runtime.Unavailable", "errorMessage": why})
}

/// The error Lambda returns for an invocation that outlived the function's timeout.
fn timed_out(timeout: Duration) -> Value {
    let message = format!("Task timed out after {:.2} seconds", timeout.as_secs_f64());
    json!({"errorType": "Sandbox.Timedout", "errorMessage": message})
}

/// The body as JSON, or as a JSON string when it is not JSON.
fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// An X-Ray trace header of the form Lambda sends.
fn trace_id() -> String {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let root = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{epoch:08x}-{};Parent={};Sampled=0",
        &root[..24],
        &parent[..16]
    )
}
