//! What every function's handler returns: the invocation result (reports, rejections, SQS
//! partial batch failures) and the error that asks Lambda for a retry.

use serde::Serialize;
use serde_json::Value;

use crate::access::AccessError;
use crate::aws::AwsError;
use crate::nodes;
use crate::report::Report;

/// A failure worth a retry (Lambda retry, SQS redelivery, then the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("Kubernetes API, {operation}: {source}")]
    Kube {
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Cni(#[from] crate::cni::CniError),
    #[error(transparent)]
    Facts(#[from] crate::pending::facts::FactsError),
}

impl HandlerError {
    /// Whether trying the event again can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Aws(e) => e.retryable,
            Self::Access(e) => e.retryable(),
            Self::Kube { source, .. } => {
                nodes::is_transient(source) || nodes::status_code(source) == Some(401)
            }
            Self::Cni(crate::cni::CniError::Aws(e)) => e.retryable,
            Self::Cni(crate::cni::CniError::Kube { source, .. }) => nodes::is_transient(source),
            Self::Cni(_) => false,
            Self::Facts(e) => e.retryable(),
        }
    }
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(err: HandlerError) -> Self {
        let error_type = match &err {
            HandlerError::Aws(_) => "EksRemedy.AwsError",
            HandlerError::Access(_) => "EksRemedy.ClusterAccessError",
            HandlerError::Kube { .. } => "EksRemedy.KubernetesError",
            HandlerError::Cni(_) => "EksRemedy.CniError",
            HandlerError::Facts(_) => "EksRemedy.DiagnosisError",
        };
        Self {
            error_type: error_type.into(),
            error_message: err.to_string(),
        }
    }
}

pub(crate) fn kube_err(operation: &'static str) -> impl FnOnce(kube::Error) -> HandlerError {
    move |source| HandlerError::Kube { operation, source }
}

/// What one invocation did, returned to Lambda and printed by the CLI.
#[derive(Debug, Serialize, Default)]
pub struct InvocationResult {
    /// Every report, in order (published or, without a topic, only logged).
    pub reports: Vec<Report>,
    /// Events refused before any action, with why.
    pub rejected: Vec<String>,
    /// Errors worth a retry.
    pub errors: Vec<String>,
    /// SQS messages to redeliver (SQS partial batch response).
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<Value>,
}

/// Takes the events out of a payload, turns each into work items with `parse`, runs `work` on
/// each, and collects reports, rejections and retryable failures. A payload that is an object
/// with `direct_key` is a direct request, not an envelope. An SQS batch reports retryable
/// failures per message; anything else fails the invocation (so Lambda retries it).
pub async fn dispatch<T, P, PF, W, WF>(
    payload: &Value,
    direct_key: Option<&str>,
    parse: P,
    work: W,
) -> Result<InvocationResult, HandlerError>
where
    P: Fn(Value) -> PF,
    PF: std::future::Future<Output = Result<Vec<T>, crate::events::EventError>>,
    W: Fn(T) -> WF,
    WF: std::future::Future<Output = Result<Vec<Report>, HandlerError>>,
{
    let mut result = InvocationResult::default();
    let direct = direct_key.is_some_and(|k| payload.get(k).is_some());
    let deliveries = if direct {
        vec![crate::events::Delivery {
            message_id: None,
            event: Ok(payload.clone()),
        }]
    } else {
        match crate::events::unwrap_deliveries(payload) {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, outcome = "rejected", "event rejected");
                result.rejected.push(err.to_string());
                return Ok(result);
            }
        }
    };
    let batch = deliveries.iter().any(|d| d.message_id.is_some());
    let mut first_error = None;
    for delivery in deliveries {
        let items = match delivery.event {
            Ok(event) => parse(event).await,
            Err(err) => Err(err),
        };
        let items = match items {
            Ok(items) => items,
            Err(err) => {
                tracing::warn!(error = %err, outcome = "rejected", "event rejected");
                result.rejected.push(err.to_string());
                continue;
            }
        };
        for item in items {
            match work(item).await {
                Ok(reports) => result.reports.extend(reports),
                Err(err) => {
                    tracing::error!(error = %err, retryable = err.retryable(), "event failed");
                    result.errors.push(err.to_string());
                    if err.retryable() {
                        match &delivery.message_id {
                            Some(id) => result
                                .batch_item_failures
                                .push(serde_json::json!({"itemIdentifier": id})),
                            None => first_error = first_error.or(Some(err)),
                        }
                    }
                }
            }
        }
    }
    match first_error {
        Some(err) if !batch => Err(err),
        _ => Ok(result),
    }
}

/// Whether eks-remedy may act on `cluster` and, if so, its facts; `Err` holds why not.
pub async fn admit_cluster(
    aws: &crate::aws::AwsClients,
    access: &crate::access::ClusterAccess,
    config: &crate::config::Config,
    cluster: &str,
) -> Result<Result<crate::aws::ClusterFacts, String>, AwsError> {
    let facts = crate::aws::describe_cluster(&aws.eks, cluster).await?;
    let allowed = config.clusters.allows(cluster)
        || facts
            .as_ref()
            .is_some_and(crate::aws::ClusterFacts::opted_in);
    if !allowed {
        return Ok(Err(format!(
            "cluster {cluster} is not in EKS_REMEDY_CLUSTERS and not tagged {}=true",
            crate::aws::OPT_IN_TAG
        )));
    }
    Ok(match (facts, access) {
        (Some(facts), _) => Ok(facts),
        // A kubeconfig serves clusters EKS does not know (local and test clusters).
        (None, crate::access::ClusterAccess::Kubeconfig(_)) => Ok(crate::aws::ClusterFacts {
            name: cluster.to_owned(),
            ..crate::aws::ClusterFacts::default()
        }),
        (None, crate::access::ClusterAccess::Eks(_)) => Err(format!(
            "cluster {cluster} is unknown to EKS in {}",
            aws.region()
        )),
    })
}

/// A Lambda function of eks-remedy: built once per cold start, then handling payloads.
pub trait Function: Sized + Sync {
    fn new(
        aws: crate::aws::AwsClients,
        access: crate::access::ClusterAccess,
        config: crate::config::Config,
    ) -> Self;

    /// Handles one payload; `deadline` is when Lambda ends the invocation.
    fn handle(
        &self,
        payload: &Value,
        deadline: Option<tokio::time::Instant>,
    ) -> impl std::future::Future<Output = Result<InvocationResult, HandlerError>>;
}

/// The Lambda entry point every function shares: logging, configuration, clients and the token
/// cache once per execution environment, then the runtime loop.
pub async fn run_lambda<F: Function>() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init();
    let config = crate::config::Config::from_env().inspect_err(|err| {
        tracing::error!(error = %err, "invalid configuration; the function cannot start");
    })?;
    let aws = crate::aws::AwsClients::from_env().await;
    let access = crate::access::ClusterAccess::eks(aws.clone());
    let function = &F::new(aws, access, config);

    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| async move {
            let remaining = event
                .context
                .deadline()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let deadline = tokio::time::Instant::now() + remaining;
            let result = function
                .handle(&event.payload, Some(deadline))
                .await
                .map_err(lambda_runtime::Diagnostic::from)?;
            serde_json::to_value(result).map_err(|e| lambda_runtime::Diagnostic {
                error_type: "EksRemedy.SerializationError".into(),
                error_message: e.to_string(),
            })
        },
    ))
    .await
}
