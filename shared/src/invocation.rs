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
