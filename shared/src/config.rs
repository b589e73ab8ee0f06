//! Configuration from environment variables, the same for every Lambda and for the CLI.

use std::collections::BTreeSet;
use std::time::Duration;

/// Which clusters eks-remedy may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAllowList {
    /// `*`: every cluster.
    All,
    /// Only these names (plus clusters tagged `eks-remedy/enabled=true`).
    Names(BTreeSet<String>),
}

impl ClusterAllowList {
    /// Parses the comma-separated `EKS_REMEDY_CLUSTERS` value.
    pub fn parse(value: &str) -> Self {
        let names: BTreeSet<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.contains("*") {
            Self::All
        } else {
            Self::Names(names)
        }
    }

    /// Whether the list names the cluster (the opt-in tag is checked elsewhere).
    pub fn allows(&self, cluster: &str) -> bool {
        match self {
            Self::All => true,
            Self::Names(names) => names.contains(cluster),
        }
    }
}

/// What to do with a pod whose eviction is still blocked when its grace period no longer fits
/// before the interruption deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlinePolicy {
    /// Keep honouring PodDisruptionBudgets and report the pods left behind.
    RespectPdb,
    /// Delete the pod (bypassing its PodDisruptionBudget) with the grace that is left.
    DeleteWithRemainingGrace,
}

/// Everything the functions read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `EKS_REMEDY_CLUSTERS`.
    pub clusters: ClusterAllowList,
    /// `EKS_REMEDY_TOPIC_ARN`: reports go here; unset means print only.
    pub topic_arn: Option<String>,
    /// `EKS_REMEDY_DRY_RUN`: decide and report, change nothing.
    pub dry_run: bool,
    /// `EKS_REMEDY_DEADLINE_POLICY`: `respect-pdb` (default) or `delete`.
    pub deadline_policy: DeadlinePolicy,
    /// `EKS_REMEDY_DRAIN_ON_REBALANCE`: drain (not only cordon) on a rebalance recommendation.
    pub drain_on_rebalance: bool,
    /// `EKS_REMEDY_EVICTION_CONCURRENCY`: evictions in flight at once per node.
    pub eviction_concurrency: usize,
    /// `EKS_REMEDY_MAX_DRAIN_SECONDS`: longest drain for notices whose deadline is far away
    /// (lifecycle hooks with heartbeats, Health scheduled changes, stopping instances).
    pub max_drain: Duration,
    /// `EKS_REMEDY_VOLUME_DETACH_SECONDS`: how long to wait for VolumeAttachments after a drain.
    pub volume_detach_wait: Duration,
    /// `EKS_REMEDY_POLL_MILLIS`: how often to look whether evicted pods are gone.
    pub poll_interval: Duration,
    /// `EKS_REMEDY_ALLOW_NODE_REPLACEMENT`: start managed node group updates so nodes pick up
    /// a new max pods.
    pub allow_node_replacement: bool,
    /// `EKS_REMEDY_ALLOW_POD_ENI`: turn on Security Groups for Pods prerequisites
    /// (`ENABLE_POD_ENI`, the `AmazonEKSVPCResourceController` policy on the cluster role).
    pub allow_pod_eni: bool,
    /// `EKS_REMEDY_ALLOW_ROLE_CREATION`: create IAM roles for Pod Identity when none is given.
    pub allow_role_creation: bool,
    /// `EKS_REMEDY_POD_IDENTITY_ROLES`: role ARNs eks-remedy may associate, by service account
    /// (`namespace/service-account=arn`) or for any (`arn`).
    pub pod_identity_roles: Vec<String>,
    /// `EKS_REMEDY_FORCE_DETACH`: force-detach a volume still attached to a stopped instance
    /// whose node is gone.
    pub allow_force_detach: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clusters: ClusterAllowList::Names(BTreeSet::new()),
            topic_arn: None,
            dry_run: false,
            deadline_policy: DeadlinePolicy::RespectPdb,
            drain_on_rebalance: false,
            eviction_concurrency: 32,
            max_drain: Duration::from_secs(600),
            volume_detach_wait: Duration::from_secs(60),
            poll_interval: Duration::from_millis(1000),
            allow_node_replacement: false,
            allow_pod_eni: false,
            allow_role_creation: false,
            pod_identity_roles: Vec::new(),
            allow_force_detach: false,
        }
    }
}

/// A configuration value that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("configuration {name}={value:?} is invalid: {expected}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    expected: &'static str,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let bool_var = |name: &'static str, default: bool| match get(name) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ConfigError {
                    name,
                    value: v,
                    expected: "true or false",
                }),
            },
        };
        // Every duration and count fits a Lambda invocation (15 minutes): larger values are
        // mistakes, and would overflow the deadline arithmetic.
        let number = |name: &'static str, default: u64| match get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n <= 900_000 => Ok(n),
                _ => Err(ConfigError {
                    name,
                    value: v,
                    expected: "a whole number up to 900000",
                }),
            },
        };

        let deadline_policy = match get("EKS_REMEDY_DEADLINE_POLICY").as_deref().map(str::trim) {
            None | Some("respect-pdb") => DeadlinePolicy::RespectPdb,
            Some("delete") => DeadlinePolicy::DeleteWithRemainingGrace,
            Some(other) => {
                return Err(ConfigError {
                    name: "EKS_REMEDY_DEADLINE_POLICY",
                    value: other.to_owned(),
                    expected: "respect-pdb or delete",
                });
            }
        };
        let eviction_concurrency = number("EKS_REMEDY_EVICTION_CONCURRENCY", 32)?;
        if eviction_concurrency == 0 {
            return Err(ConfigError {
                name: "EKS_REMEDY_EVICTION_CONCURRENCY",
                value: "0".into(),
                expected: "at least 1",
            });
        }

        Ok(Self {
            clusters: get("EKS_REMEDY_CLUSTERS")
                .map(|v| ClusterAllowList::parse(&v))
                .unwrap_or(defaults.clusters),
            topic_arn: get("EKS_REMEDY_TOPIC_ARN").map(|v| v.trim().to_owned()),
            dry_run: bool_var("EKS_REMEDY_DRY_RUN", false)?,
            deadline_policy,
            drain_on_rebalance: bool_var("EKS_REMEDY_DRAIN_ON_REBALANCE", false)?,
            eviction_concurrency: eviction_concurrency as usize,
            max_drain: Duration::from_secs(number("EKS_REMEDY_MAX_DRAIN_SECONDS", 600)?.min(900)),
            volume_detach_wait: Duration::from_secs(
                number("EKS_REMEDY_VOLUME_DETACH_SECONDS", 60)?.min(900),
            ),
            poll_interval: Duration::from_millis(number("EKS_REMEDY_POLL_MILLIS", 1000)?.max(10)),
            allow_node_replacement: bool_var("EKS_REMEDY_ALLOW_NODE_REPLACEMENT", false)?,
            allow_pod_eni: bool_var("EKS_REMEDY_ALLOW_POD_ENI", false)?,
            allow_role_creation: bool_var("EKS_REMEDY_ALLOW_ROLE_CREATION", false)?,
            pod_identity_roles: get("EKS_REMEDY_POD_IDENTITY_ROLES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            allow_force_detach: bool_var("EKS_REMEDY_FORCE_DETACH", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn allow_list_takes_names_and_star() {
        let c = config(&[("EKS_REMEDY_CLUSTERS", " prod, staging ,")]).unwrap();
        assert!(c.clusters.allows("prod") && c.clusters.allows("staging"));
        assert!(!c.clusters.allows("dev"));
        let c = config(&[("EKS_REMEDY_CLUSTERS", "*")]).unwrap();
        assert!(c.clusters.allows("anything"));
        assert!(!config(&[]).unwrap().clusters.allows("prod"));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let err = config(&[("EKS_REMEDY_DRY_RUN", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("EKS_REMEDY_DRY_RUN"));
        let err = config(&[("EKS_REMEDY_DEADLINE_POLICY", "yolo")]).unwrap_err();
        assert!(err.to_string().contains("respect-pdb or delete"));
        assert!(config(&[("EKS_REMEDY_EVICTION_CONCURRENCY", "0")]).is_err());
        assert!(config(&[("EKS_REMEDY_MAX_DRAIN_SECONDS", "18446744073709551615")]).is_err());
        let c = config(&[("EKS_REMEDY_MAX_DRAIN_SECONDS", "5000")]).unwrap();
        assert_eq!(
            c.max_drain,
            Duration::from_secs(900),
            "capped at Lambda's 15 minutes"
        );
    }

    #[test]
    fn dry_run_and_policy_are_read() {
        let c = config(&[
            ("EKS_REMEDY_DRY_RUN", "TRUE"),
            ("EKS_REMEDY_DEADLINE_POLICY", "delete"),
        ])
        .unwrap();
        assert!(c.dry_run);
        assert_eq!(c.deadline_policy, DeadlinePolicy::DeleteWithRemainingGrace);
    }
}
