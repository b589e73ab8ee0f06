//! Secrets: a whole incident (a spot warning, the node drained) handled with logging at trace,
//! the handler's log lines captured, and neither the EKS bearer token nor the AWS secret key
//! nor the session token found in them, in what the handler returns, or in what it publishes.

use eks_remedy::invocation::Function;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use aws_credential_types::provider::ProvideCredentials;
use base64::Engine;
use chrono::Utc;
use eks_remedy::report::Outcome;
use eks_remedy_tests::world::*;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log lines collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs, once for this test binary, the subscriber a function installs with
/// `EKS_REMEDY_LOG_LEVEL=trace` (the same filter directives, as JSON), writing into memory.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let filter = EnvFilter::new(eks_remedy::telemetry::directives("trace"));
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(captured.clone())
            .init();
        captured
    })
}

#[tokio::test]
async fn a_whole_incident_at_trace_level_logs_and_reports_no_token_or_key() {
    let logs = logs();
    let world = World::new("secrets", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    world.kube.create(pod("shop", "web-2", &node.name, "web"));

    let result = world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .expect("handled");

    assert_eq!(
        result.reports.last().and_then(|r| r.outcome),
        Some(Outcome::Drained)
    );

    // The secrets: the token the API server received, the presigned URL inside it and its
    // signature, and the credentials the handler signed with.
    let token = world
        .kube
        .requests()
        .iter()
        .find_map(|r| r.authorization.clone())
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned))
        .expect("the handler sent a bearer token");
    assert!(token.starts_with("k8s-aws-v1."));
    let presigned = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_start_matches("k8s-aws-v1."))
            .expect("base64url"),
    )
    .expect("a URL");
    let signature = url::Url::parse(&presigned)
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Signature")
        .map(|(_, v)| v.into_owned())
        .expect("a signature");
    let credentials = world
        .sdk
        .credentials_provider()
        .expect("credentials")
        .provide_credentials()
        .await
        .expect("credentials");
    let session_token = credentials
        .session_token()
        .expect("the test account's credentials are temporary")
        .to_owned();
    let secrets = [
        ("the bearer token", token.clone()),
        ("the bearer token's prefix", "k8s-aws-v1.".to_owned()),
        ("the token's presigned URL", presigned.clone()),
        ("the token's signature", signature),
        (
            "the secret access key",
            credentials.secret_access_key().to_owned(),
        ),
        ("the session token", session_token.clone()),
        (
            "the session token, URL-encoded",
            url::form_urlencoded::byte_serialize(session_token.as_bytes()).collect(),
        ),
    ];

    let logged = logs.text();
    assert!(
        logged.contains("\"level\":\"TRACE\""),
        "trace lines were captured"
    );
    assert!(
        logged.contains(&node.instance_id),
        "the handler's own lines were captured"
    );
    let returned = serde_json::to_string(&result).expect("the result serialises");
    let published = format!("{:?}", world.published().await);
    assert!(published.contains("drained"), "the reports were published");
    let mut found = Vec::new();
    for (what, secret) in &secrets {
        for (place, text) in [
            ("the logs", &logged),
            ("the invocation result", &returned),
            ("the SNS messages", &published),
        ] {
            for line in text.lines().filter(|l| l.contains(secret.as_str())) {
                let target = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["target"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                found.push(format!(
                    "{what} in {place} ({target}): {}",
                    &line[..line.len().min(300)]
                ));
            }
        }
    }
    found.dedup_by(|a, b| a.split(':').next() == b.split(':').next());
    assert!(found.is_empty(), "{}", found.join("\n"));
}
