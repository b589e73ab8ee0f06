//! AWS clients, built once per cold start, and the facts eks-remedy reads from EC2 and EKS.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use base64::Engine;

/// Tag on an EKS cluster that opts it in to eks-remedy.
pub const OPT_IN_TAG: &str = "eks-remedy/enabled";

/// The AWS clients the functions use.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub ec2: aws_sdk_ec2::Client,
    pub eks: aws_sdk_eks::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub sns: aws_sdk_sns::Client,
    pub sdk: SdkConfig,
}

impl AwsClients {
    /// Loads the standard SDK configuration (environment, profile, container or Lambda
    /// credentials; `AWS_ENDPOINT_URL` for local emulators).
    pub async fn from_env() -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(sdk)
    }

    /// Builds every client from one SDK configuration.
    pub fn new(sdk: SdkConfig) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            eks: aws_sdk_eks::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            sdk,
        }
    }

    /// The configured region, or an empty string when none is set.
    pub fn region(&self) -> String {
        self.sdk
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default()
    }
}

/// An AWS call failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {resource}: {code}: {message}")]
pub struct AwsError {
    pub operation: &'static str,
    pub resource: String,
    pub code: String,
    pub message: String,
    /// Whether trying again later can succeed (throttling, 5xx, network).
    pub retryable: bool,
}

impl AwsError {
    /// Wraps an SDK error with the operation and the resource it was about.
    pub fn from_sdk<E>(
        operation: &'static str,
        resource: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message, retryable) = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or("Unknown").to_owned();
                let throttled = code.contains("Throttl") || code == "RequestLimitExceeded";
                let status = service.raw().status().as_u16();
                (
                    code,
                    e.message().unwrap_or_default().to_owned(),
                    throttled || status >= 500,
                )
            }
            SdkError::ConstructionFailure(_) => {
                ("ConstructionFailure".into(), format!("{err:?}"), false)
            }
            // The context keeps the cause ("connection refused") that Display drops.
            other => (
                "Transport".into(),
                DisplayErrorContext(other).to_string(),
                true,
            ),
        };
        Self {
            operation,
            resource: resource.to_owned(),
            code,
            message,
            retryable,
        }
    }
}

/// Helper so SDK results read `.map_err(aws_err("DescribeInstances", id))`.
pub fn aws_err<E>(
    operation: &'static str,
    resource: &str,
) -> impl FnOnce(SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let resource = resource.to_owned();
    move |err| AwsError::from_sdk(operation, &resource, err)
}

/// What EC2 says about an instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceFacts {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    /// `running`, `stopping`, `terminated`, ...
    pub state: String,
    /// `spot` or `on-demand`.
    pub lifecycle: String,
    pub tags: BTreeMap<String, String>,
}

impl InstanceFacts {
    /// The EKS cluster the instance belongs to, from the tags EKS, eksctl and Karpenter set.
    pub fn cluster(&self) -> Option<String> {
        for key in ["eks:cluster-name", "aws:eks:cluster-name"] {
            if let Some(name) = self.tags.get(key).filter(|v| !v.is_empty()) {
                return Some(name.clone());
            }
        }
        self.tags.iter().find_map(|(key, value)| {
            let name = key.strip_prefix("kubernetes.io/cluster/")?;
            (matches!(value.as_str(), "owned" | "shared") && !name.is_empty())
                .then(|| name.to_owned())
        })
    }

    /// The managed node group, or the Karpenter node pool, that launched the instance.
    pub fn node_group(&self) -> Option<String> {
        [
            "eks:nodegroup-name",
            "karpenter.sh/nodepool",
            "alpha.eksctl.io/nodegroup-name",
        ]
        .iter()
        .find_map(|k| self.tags.get(*k).cloned())
    }

    /// The Auto Scaling group of the instance.
    pub fn auto_scaling_group(&self) -> Option<String> {
        self.tags.get("aws:autoscaling:groupName").cloned()
    }
}

/// Describes one instance; `None` when EC2 does not know it.
pub async fn describe_instance(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<InstanceFacts>, AwsError> {
    let result = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await;
    let output = match result {
        Ok(output) => output,
        Err(err) => {
            let err = AwsError::from_sdk("DescribeInstances", instance_id, err);
            if err.code.starts_with("InvalidInstanceID") {
                return Ok(None);
            }
            return Err(err);
        }
    };
    let instance = output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id));
    Ok(instance.map(|i| InstanceFacts {
        instance_id: instance_id.to_owned(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        lifecycle: i
            .instance_lifecycle()
            .map(|l| l.as_str().to_owned())
            .unwrap_or_else(|| "on-demand".into()),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
    }))
}

/// What EKS says about a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    pub name: String,
    pub endpoint: String,
    /// DER certificates of the cluster CA.
    pub ca_der: Vec<Vec<u8>>,
    pub tags: BTreeMap<String, String>,
    /// The cluster's IAM role.
    pub role_arn: Option<String>,
    /// The cluster's ARN (its account is the one roles are created in).
    pub arn: Option<String>,
}

impl ClusterFacts {
    /// Whether the cluster carries the opt-in tag.
    pub fn opted_in(&self) -> bool {
        self.tags
            .get(OPT_IN_TAG)
            .map(|v| v.eq_ignore_ascii_case("true"))
            == Some(true)
    }
}

/// Describes a cluster; `None` when EKS does not know it.
pub async fn describe_cluster(
    eks: &aws_sdk_eks::Client,
    name: &str,
) -> Result<Option<ClusterFacts>, AwsError> {
    let output = match eks.describe_cluster().name(name).send().await {
        Ok(output) => output,
        Err(err) => {
            let err = AwsError::from_sdk("DescribeCluster", name, err);
            if err.code == "ResourceNotFoundException" {
                return Ok(None);
            }
            return Err(err);
        }
    };
    let Some(cluster) = output.cluster() else {
        return Ok(None);
    };
    let ca_der = match cluster.certificate_authority().and_then(|c| c.data()) {
        Some(data) => pem_certificates(data).map_err(|message| AwsError {
            operation: "DescribeCluster",
            resource: name.to_owned(),
            code: "InvalidCertificateAuthority".into(),
            message,
            retryable: false,
        })?,
        None => Vec::new(),
    };
    Ok(Some(ClusterFacts {
        name: name.to_owned(),
        endpoint: cluster.endpoint().unwrap_or_default().to_owned(),
        role_arn: cluster.role_arn().map(str::to_owned),
        arn: cluster.arn().map(str::to_owned),
        ca_der,
        tags: cluster
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }))
}

/// Decodes `certificateAuthority.data`: base64 of a PEM bundle, into DER certificates.
pub fn pem_certificates(data: &str) -> Result<Vec<Vec<u8>>, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let pem = engine
        .decode(data.trim())
        .map_err(|e| format!("certificate authority is not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "certificate authority is not PEM".to_owned())?;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, body.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b)) => {
                certs.push(
                    engine
                        .decode(b.as_bytes())
                        .map_err(|e| format!("certificate is not base64: {e}"))?,
                );
                body = None;
            }
            (l, Some(b)) => b.push_str(l),
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err("certificate authority holds no PEM certificate".into());
    }
    Ok(certs)
}
