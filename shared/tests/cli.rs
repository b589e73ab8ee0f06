//! The `eks-remedy` CLI as an operator runs it: `replay` an event file against moto and the
//! Kubernetes test API server through a kubeconfig, with the same handler as the Lambda.

use tokio::process::Command;

use aws_credential_types::provider::ProvideCredentials;
use chrono::Utc;
use eks_remedy_tests::world::*;
use serde_json::Value;

async fn cli(world: &World, args: &[&str], dry_run_env: bool) -> (i32, Value, String) {
    let creds = world
        .sdk
        .credentials_provider()
        .unwrap()
        .provide_credentials()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("eks-remedy-cli-{}", world.account));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, world.kube.kubeconfig("admin-token")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_eks-remedy"));
    command
        .args(args.iter().map(|a| {
            a.replace("{kubeconfig}", kubeconfig.to_str().unwrap())
                .replace("{dir}", dir.to_str().unwrap())
        }))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", eks_remedy_tests::aws::endpoint())
        .env("AWS_REGION", &world.region)
        .env("AWS_ACCESS_KEY_ID", creds.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", creds.secret_access_key())
        .env(
            "AWS_SESSION_TOKEN",
            creds.session_token().unwrap_or_default(),
        )
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("EKS_REMEDY_CLUSTERS", &world.cluster)
        .env("EKS_REMEDY_TOPIC_ARN", &world.topic_arn)
        .env("EKS_REMEDY_POLL_MILLIS", "20");
    if dry_run_env {
        command.env("EKS_REMEDY_DRY_RUN", "true");
    }
    // Async, so the in-process test servers keep answering while the CLI runs.
    let output = command.output().await.expect("eks-remedy runs");
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (
        output.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_event(world: &World, name: &str, event: &Value) -> String {
    let dir = std::env::temp_dir().join(format!("eks-remedy-cli-{}", world.account));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, event.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn replay_drains_through_a_kubeconfig_and_prints_the_reports() {
    let world = World::new("cli", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let event = write_event(
        &world,
        "spot.json",
        &spot_warning(&world, &node.instance_id, Utc::now()),
    );

    let (code, stdout, stderr) = cli(
        &world,
        &["replay", &event, "--kubeconfig", "{kubeconfig}"],
        false,
    )
    .await;

    assert_eq!(code, 0, "{stderr}");
    let outcomes: Vec<&str> = stdout["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["started", "drained"]);
    assert!(world.pods_on(&node.name).is_empty());
    assert!(
        world
            .kube
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer admin-token"))
    );
    assert_eq!(world.published().await.len(), 2);
}

#[tokio::test]
async fn replay_through_eks_signs_a_token_and_dry_run_changes_nothing() {
    let world = World::new("cli-eks", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let event = write_event(
        &world,
        "spot.json",
        &spot_warning(&world, &node.instance_id, Utc::now()),
    );

    let (code, stdout, stderr) = cli(&world, &["replay", &event, "--dry-run"], false).await;

    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout["reports"][1]["dry_run"], true);
    assert_eq!(world.pods_on(&node.name), ["web-1"]);
    let requests = world.kube.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.method == "GET"));
    assert!(requests.iter().all(|r| {
        r.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer k8s-aws-v1."))
    }));
    assert!(!stderr.contains("k8s-aws-v1."), "the token is not logged");
}

#[tokio::test]
async fn replay_exits_non_zero_with_a_reason_for_bad_input() {
    let world = World::new("cli-bad", false).await;
    let not_json = write_event(&world, "broken.json", &Value::String("x".into()));
    std::fs::write(&not_json, "{not json").unwrap();
    let unknown = write_event(
        &world,
        "unknown.json",
        &serde_json::json!({"source": "aws.s3", "detail-type": "Object Created", "time": "2026-12-04T10:00:00Z", "region": "us-east-1", "detail": {}}),
    );

    let (code, _, stderr) = cli(&world, &["replay", &not_json], false).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("not JSON"), "{stderr}");

    let (code, stdout, _) = cli(&world, &["replay", &unknown], false).await;
    assert_eq!(code, 1);
    assert!(stdout["rejected"][0].as_str().unwrap().contains("aws.s3"));

    let (code, _, stderr) = cli(&world, &["replay", "{dir}/missing.json"], false).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

#[tokio::test]
async fn max_pods_reproduces_the_reference_table_from_ec2_instance_data() {
    let world = World::new("cli-max-pods", false).await;
    let table = std::fs::read_to_string(format!(
        "{}/../tests/fixtures/reference/eni-max-pods.tsv",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in rows.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split('\t').collect();
        let instance_type = cells[col("instance_type")];
        for (flags, column) in [
            (vec![], "max_pods_secondary"),
            (vec!["--prefix-delegation"], "max_pods_prefix"),
            (vec!["--custom-networking"], "max_pods_custom_networking"),
        ] {
            let mut args = vec!["max-pods", "--instance-type", instance_type];
            args.extend(flags.iter().copied());
            let (code, stdout, stderr) = cli(&world, &args, false).await;
            assert_eq!(code, 0, "{stderr}");
            assert_eq!(
                stdout.to_string(),
                cells[col(column)],
                "{instance_type} {flags:?}"
            );
        }
    }

    let (code, stdout, _) = cli(
        &world,
        &[
            "max-pods",
            "--instance-type",
            "c5.4xlarge",
            "--prefix-delegation",
            "--json",
        ],
        false,
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(stdout["result"]["max_pods"], 110);
    assert!(
        stdout["result"]["working"]
            .as_str()
            .unwrap()
            .contains("capped at 110")
    );
    let (code, _, stderr) = cli(
        &world,
        &["max-pods", "--instance-type", "x9.nonexistent"],
        false,
    )
    .await;
    assert_eq!(code, 2, "an unknown type is unusable input");
    assert!(stderr.contains("x9.nonexistent"), "{stderr}");
}
