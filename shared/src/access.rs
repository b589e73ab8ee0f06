//! Authenticated Kubernetes clients for the clusters eks-remedy acts on.
//!
//! In a Lambda the endpoint and CA come from `eks:DescribeCluster` and the credentials are an
//! EKS bearer token signed with the function's role; tokens are cached across warm invocations.
//! Operators and tests may instead hand in a kubeconfig, which then serves for any cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use secrecy::SecretString;

use crate::aws::{AwsClients, AwsError, ClusterFacts};
use crate::token::{EksToken, TokenError, sign_token};

/// A Kubernetes client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cluster {cluster}: {reason}")]
    Cluster { cluster: String, reason: String },
    #[error("loading AWS credentials to sign the EKS token: {0}")]
    Credentials(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

impl AccessError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Aws(e) => e.retryable,
            Self::Credentials(_) => true,
            _ => false,
        }
    }
}

/// Where Kubernetes clients come from.
pub enum ClusterAccess {
    /// EKS: DescribeCluster for endpoint and CA, a bearer token from the AWS credentials.
    Eks(Box<EksAccess>),
    /// A fixed kubeconfig, used for whatever cluster is asked for.
    Kubeconfig(Box<kube::Config>),
}

impl ClusterAccess {
    /// Access through EKS with the given AWS clients.
    pub fn eks(aws: AwsClients) -> Self {
        Self::Eks(Box::new(EksAccess::new(aws)))
    }
}

impl ClusterAccess {
    /// Loads a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, AccessError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| AccessError::Kubeconfig(format!("{}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| AccessError::Kubeconfig(format!("{}: {e}", path.display())))?;
        Ok(Self::Kubeconfig(Box::new(config)))
    }

    /// A client for `cluster`, good for at least `needed`.
    pub async fn client(
        &self,
        cluster: &ClusterFacts,
        needed: Duration,
    ) -> Result<kube::Client, AccessError> {
        let config = match self {
            Self::Kubeconfig(config) => {
                let mut config = (**config).clone();
                config.default_retry = false;
                config
            }
            Self::Eks(eks) => eks.config(cluster, needed).await?,
        };
        kube::Client::try_from(config).map_err(|e| AccessError::Cluster {
            cluster: cluster.name.clone(),
            reason: format!("building the Kubernetes client: {e}"),
        })
    }

    /// Forgets the cached token of `cluster`, after the API server refused it.
    pub fn forget_token(&self, cluster: &str) {
        if let Self::Eks(eks) = self {
            eks.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(cluster);
        }
    }
}

/// Access through EKS with tokens cached per cluster.
pub struct EksAccess {
    aws: AwsClients,
    tokens: Mutex<HashMap<String, EksToken>>,
}

impl EksAccess {
    pub fn new(aws: AwsClients) -> Self {
        Self {
            aws,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A token good for `needed` (reused from the cache when it is).
    ///
    /// Limitation: a client holds one token for its whole life, so an invocation longer than
    /// the token's 15 minutes (Lambda's own maximum) would see 401s near its end; such a
    /// failure is returned as retryable and the retry signs a new token.
    async fn token(&self, cluster: &str, needed: Duration) -> Result<EksToken, AccessError> {
        let now = SystemTime::now();
        if let Some(token) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .filter(|t| t.usable_for(now, needed))
        {
            return Ok(token.clone());
        }

        let provider = self.aws.sdk.credentials_provider().ok_or_else(|| {
            AccessError::Credentials("no credentials provider is configured".into())
        })?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| AccessError::Credentials(e.to_string()))?;
        let region = self.aws.region();
        let token = sign_token(cluster, &region, &credentials, now)?;
        tracing::debug!(cluster, "signed a new EKS token");
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_owned(), token.clone());
        Ok(token)
    }

    async fn config(
        &self,
        cluster: &ClusterFacts,
        needed: Duration,
    ) -> Result<kube::Config, AccessError> {
        let invalid = |reason: String| AccessError::Cluster {
            cluster: cluster.name.clone(),
            reason,
        };
        let url: http::Uri = cluster
            .endpoint
            .parse()
            .map_err(|e| invalid(format!("endpoint {:?}: {e}", cluster.endpoint)))?;
        if url.scheme_str() == Some("https") && cluster.ca_der.is_empty() {
            return Err(invalid(
                "DescribeCluster returned no certificate authority".into(),
            ));
        }
        let token = self.token(&cluster.name, needed).await?;

        let mut config = kube::Config::new(url);
        if !cluster.ca_der.is_empty() {
            config.root_cert = Some(cluster.ca_der.clone());
        }
        config.auth_info.token = Some(SecretString::from(token.expose().to_owned()));
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        config.write_timeout = Some(Duration::from_secs(30));
        // Retries are ours: a 429 from an eviction is a PodDisruptionBudget answer, and every
        // wait must fit the interruption deadline (see `crate::nodes::retrying`).
        config.default_retry = false;
        Ok(config)
    }
}
