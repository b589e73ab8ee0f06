//! The AWS side of the test world, in the moto server the test scripts start on 127.0.0.1.
//!
//! Every test gets its own AWS account (STS AssumeRole into a fresh account id), so tests run
//! in parallel against one moto server without seeing each other's resources.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use serde_json::Value;

/// The moto endpoint: `EKS_REMEDY_TEST_AWS_ENDPOINT`, which must be a loopback URL.
pub fn endpoint() -> String {
    let endpoint = std::env::var("EKS_REMEDY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("EKS_REMEDY_TEST_AWS_ENDPOINT is not set: run the tests with tests/run.sh, which starts moto")
    });
    assert!(
        endpoint.starts_with("http://127.0.0.1:"),
        "EKS_REMEDY_TEST_AWS_ENDPOINT must be http://127.0.0.1:PORT, got {endpoint}"
    );
    endpoint
}

fn base_config(region: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint())
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

static NEXT_ACCOUNT: AtomicU64 = AtomicU64::new(0);

/// An SDK configuration for a fresh, empty moto account in `region`.
pub async fn fresh_account(region: &str) -> (SdkConfig, String) {
    let seed = NEXT_ACCOUNT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let account = format!(
        "{:012}",
        (std::process::id() as u64 * 1_000_003 + seed * 7_919 + nanos) % 900_000_000_000
            + 100_000_000_000
    );
    let root = base_config(
        region,
        Credentials::new("testing", "testing", None, None, "moto"),
    );
    let sts = assume(&root, &account).await;
    (base_config(region, sts), account)
}

async fn assume(root: &SdkConfig, account: &str) -> Credentials {
    let sts = aws_sdk_sts::Client::new(root);
    let out = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/eks-remedy-test"))
        .role_session_name("eks-remedy-test")
        .send()
        .await
        .expect("AssumeRole in moto");
    let c = out.credentials().expect("credentials");
    Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "moto-assumed",
    )
}

/// An image id moto knows in the configured region.
pub async fn any_image(ec2: &aws_sdk_ec2::Client) -> String {
    let images = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("DescribeImages");
    images
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
        .expect("moto serves at least one AMI")
}

/// Reads every SNS message delivered to an SQS queue so far (SNS envelope decoded).
pub async fn drain_queue(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("ReceiveMessage");
        let batch = out.messages();
        if batch.is_empty() {
            return messages;
        }
        for m in batch {
            let body: Value = serde_json::from_str(m.body().unwrap_or("{}")).expect("SNS envelope");
            messages.push(body);
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
}
