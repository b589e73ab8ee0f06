//! The EKS token eks-remedy signs is the one botocore (and so `aws eks get-token`) makes from
//! the same credentials, cluster, region and time, byte for byte.

use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use eks_remedy::token::sign_token;

fn botocore_token(cluster: &str, region: &str, creds: &Credentials, unix: u64) -> String {
    let python = std::env::var("EKS_REMEDY_PYTHON")
        .expect("EKS_REMEDY_PYTHON is not set: run the tests with tests/run.sh");
    let script = format!("{}/moto/botocore_token.py", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(script)
        .args([
            cluster,
            region,
            creds.access_key_id(),
            creds.secret_access_key(),
        ])
        .arg(creds.session_token().unwrap_or("-"))
        .arg(unix.to_string())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("botocore_token.py runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn token_is_byte_identical_to_botocore_for_long_term_and_temporary_credentials() {
    let unix = 1_796_383_800;
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(unix);
    let cases = [
        (
            "shop-prod",
            "us-east-1",
            Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "t",
            ),
        ),
        (
            "payments",
            "eu-central-1",
            Credentials::new(
                "ASIAEXAMPLE",
                "secret/with+symbols=",
                Some("IQoJb3JpZ2luX2VjE/+session==token".into()),
                None,
                "t",
            ),
        ),
    ];
    for (cluster, region, creds) in cases {
        let ours = sign_token(cluster, region, &creds, time).expect("signed");
        assert_eq!(
            ours.expose(),
            botocore_token(cluster, region, &creds, unix),
            "cluster {cluster}"
        );
    }
}
