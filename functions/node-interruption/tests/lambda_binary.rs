//! The node-interruption binary as Lambda runs it: a child process that polls the test Runtime
//! API server, reads its configuration from the environment and reaches AWS (moto) and the
//! cluster's API server only on 127.0.0.1.

use std::time::{Duration, SystemTime};

use eks_remedy_tests::runtime_api::{FunctionProcess, RuntimeApi, credential_vars};
use eks_remedy_tests::world::{World, daemonset_pod, pod, sample, spot_warning};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_node-interruption");

/// The function's timeout, as configured on the Lambda.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A runtime API server and the binary polling it, with `vars` added to its environment.
async fn start(vars: &[(&str, String)]) -> (RuntimeApi, FunctionProcess) {
    let api = RuntimeApi::start("node-interruption")
        .await
        .expect("runtime API server");
    let mut command = api.command(BINARY);
    command.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    let function = FunctionProcess::spawn(command).expect("the node-interruption binary starts");
    (api, function)
}

/// Invokes the function and expects a response, showing its output when there is none.
async fn respond(api: &RuntimeApi, function: &FunctionProcess, event: Value) -> Value {
    match api.invoke(event, TIMEOUT).await {
        Ok(response) => response,
        Err(error) => panic!(
            "the invocation failed with {error}; function output:\n{}",
            function.output()
        ),
    }
}

/// The spot interruption warning of the AWS docs for `instance`, in us-east-1. Its time is in
/// the past: these tests never get as far as the deadline.
fn spot_event(instance: &str) -> Value {
    let mut event = sample("ec2-spot-instance-interruption-warning.json");
    event["time"] = json!("2025-06-01T12:00:00Z");
    event["region"] = json!("us-east-1");
    event["detail"]["instance-id"] = json!(instance);
    event["detail"]["instance-action"] = json!("terminate");
    event
}

fn texts(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
async fn malformed_events_are_answered_with_rejections_and_the_runtime_keeps_polling() {
    let (api, mut function) = start(&[("EKS_REMEDY_CLUSTERS", "shop-prod".into())]).await;

    let first = respond(&api, &function, json!({"hello": 1})).await;
    let second = respond(&api, &function, json!({"Records": []})).await;

    let rejected = texts(&first["rejected"]);
    assert_eq!(rejected.len(), 1, "{first}");
    assert!(
        rejected[0].starts_with("malformed event")
            && rejected[0].contains("source and detail-type"),
        "{first}"
    );
    assert_eq!(first["reports"], json!([]));
    assert_eq!(first["errors"], json!([]));
    assert_eq!(
        texts(&second["rejected"]),
        ["malformed event: Records is empty"]
    );
    assert!(
        function
            .wait_for_output(r#""outcome":"rejected""#, Duration::from_secs(5))
            .await,
        "the rejection is logged as JSON; output:\n{}",
        function.output()
    );
    function.stop().await;
}

#[tokio::test]
async fn spot_warning_for_an_instance_unknown_to_ec2_is_ignored_with_the_configured_dry_run() {
    let (api, mut function) = start(&[
        ("EKS_REMEDY_CLUSTERS", "*".into()),
        ("EKS_REMEDY_DRY_RUN", "true".into()),
    ])
    .await;
    let instance = "i-0e5c0ffee0000dead";

    let response = respond(&api, &function, spot_event(instance)).await;

    assert_eq!(response["errors"], json!([]), "{response}");
    assert_eq!(response["rejected"], json!([]), "{response}");
    let reports = response["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 1, "{response}");
    let report = &reports[0];
    assert_eq!(report["outcome"], "ignored");
    assert_eq!(report["instance_id"], instance);
    assert_eq!(report["kind"], "spot-interruption");
    assert_eq!(
        report["summary"],
        format!("instance {instance} is unknown to EC2 in us-east-1")
    );
    assert_eq!(
        report["dry_run"], true,
        "EKS_REMEDY_DRY_RUN reached the handler"
    );
    function.stop().await;
}

/// EC2 out of reach is worth a retry: the invocation fails, so Lambda retries the event and
/// then sends it to the dead-letter queue.
#[tokio::test]
async fn unreachable_ec2_fails_the_invocation_with_the_operation_and_instance() {
    // A 127.0.0.1 port nothing listens on once the listener is gone.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let (api, mut function) = start(&[
        ("EKS_REMEDY_CLUSTERS", "*".into()),
        ("AWS_ENDPOINT_URL", format!("http://{closed}")),
    ])
    .await;
    let instance = "i-0e5c0ffee0000beef";

    let outcome = api.invoke(spot_event(instance), TIMEOUT).await;

    let error = outcome.expect_err("an invocation error");
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("DescribeInstances") && message.contains(instance),
        "{error}; output:\n{}",
        function.output()
    );
    assert_eq!(error["errorType"], "EksRemedy.AwsError");
    assert!(
        message.to_lowercase().contains("connect"),
        "the cause is kept: {message}"
    );
    function.stop().await;
}

/// `main` returns the configuration error before it starts the runtime, so nothing is posted
/// to `/runtime/init/error`: the process exits with status 1 and Rust prints the error to
/// stderr. Lambda records that as `Runtime.ExitError`, and the message is in the function's log.
#[tokio::test]
async fn invalid_configuration_ends_the_process_before_it_polls_and_names_the_variable() {
    let (api, mut function) = start(&[("EKS_REMEDY_DRY_RUN", "maybe".into())]).await;

    let status = function.exit_status(Duration::from_secs(30)).await;

    let output = function.output();
    let status = status.unwrap_or_else(|| panic!("the process still runs; output:\n{output}"));
    assert_eq!(status.code(), Some(1), "output:\n{output}");
    assert!(
        output.contains("EKS_REMEDY_DRY_RUN") && output.contains("maybe"),
        "the error names the variable and its value; output:\n{output}"
    );
    assert_eq!(api.next_requests(), 0, "no invocation was asked for");
    assert_eq!(api.init_error(Duration::ZERO).await, None);
}

#[tokio::test]
async fn spot_warning_drains_the_node_and_publishes_the_reports() {
    let world = World::new("shop-prod", false).await;
    let node = world.node(Some("ip-10-0-1-21.ec2.internal")).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    world.kube.create(pod("shop", "web-2", &node.name, "web"));
    world.kube.create(daemonset_pod("aws-node-x1", &node.name));
    let mut vars = credential_vars(&world.sdk).await;
    vars.extend([
        ("EKS_REMEDY_CLUSTERS", world.cluster.clone()),
        ("EKS_REMEDY_TOPIC_ARN", world.topic_arn.clone()),
        ("EKS_REMEDY_POLL_MILLIS", "20".into()),
        ("EKS_REMEDY_VOLUME_DETACH_SECONDS", "5".into()),
    ]);
    let (api, mut function) = start(&vars).await;

    let event = spot_warning(&world, &node.instance_id, SystemTime::now().into());
    let response = respond(&api, &function, event).await;

    let outcomes: Vec<&Value> = response["reports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["outcome"])
        .collect();
    assert_eq!(outcomes, ["started", "drained"], "{response}");
    assert_eq!(world.pods_on(&node.name), ["aws-node-x1"]);
    let state = world.node_state(&node.name).expect("the node");
    assert_eq!(state["spec"]["unschedulable"], true);
    let published = world.published().await;
    let published: Vec<&Value> = published
        .iter()
        .map(|(_, attributes)| &attributes["outcome"]["Value"])
        .collect();
    assert_eq!(published, ["started", "drained"]);
    function.stop().await;
}
