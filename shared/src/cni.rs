//! The Amazon VPC CNI's configuration, and who owns it: the managed `vpc-cni` add-on (changed
//! through `UpdateAddon` configuration values) or a self-managed `aws-node` DaemonSet (changed
//! by a strategic merge patch of its `aws-node` container's env, which keeps the other
//! containers and variables; a JSON merge patch of `containers` would drop them).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::aws::{AwsError, aws_err};
use crate::nodes::{retrying, status_code};

pub const ADDON: &str = "vpc-cni";
pub const DAEMON_SET: &str = "aws-node";
pub const CONTAINER: &str = "aws-node";

/// A CNI version, `v1.18.3-eksbuild.1` or an image tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(Self(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Who owns the CNI's configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "owner", rename_all = "kebab-case")]
pub enum Owner {
    /// The managed add-on; `configuration` is its current configuration values.
    ManagedAddon {
        version: String,
        configuration: Option<String>,
    },
    /// A self-managed DaemonSet.
    SelfManaged,
}

/// What the CNI runs with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CniFacts {
    pub owner: Owner,
    pub version: Option<Version>,
    /// The `aws-node` container's env, with the add-on's configured env on top (what will run
    /// once EKS has applied it).
    pub env: BTreeMap<String, String>,
}

impl CniFacts {
    fn flag(&self, name: &str) -> bool {
        self.env
            .get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    pub fn prefix_delegation(&self) -> bool {
        self.flag("ENABLE_PREFIX_DELEGATION")
    }

    pub fn pod_eni(&self) -> bool {
        self.flag("ENABLE_POD_ENI")
    }

    pub fn custom_networking(&self) -> bool {
        self.flag("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG")
    }
}

/// Reading or changing the CNI failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("DaemonSet kube-system/aws-node, {operation}: {source}")]
    Kube {
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the vpc-cni add-on's configuration values are neither JSON nor YAML: {0}")]
    Configuration(String),
}

/// Parses add-on configuration values (JSON or YAML) into JSON.
pub fn parse_configuration(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(text).or_else(|json_err| {
        serde_saphyr::from_str::<Value>(text).map_err(|yaml_err| format!("{json_err}; {yaml_err}"))
    })
}

/// Merges `env` into existing configuration values, keeping everything else, and returns the
/// JSON to send. Variables in `defaults` are only set when absent.
pub fn merged_configuration(
    existing: Option<&str>,
    env: &[(&str, &str)],
    defaults: &[(&str, &str)],
) -> Result<String, String> {
    let mut config = parse_configuration(existing.unwrap_or(""))?;
    if !config.is_object() {
        return Err("the configuration values are not a map".into());
    }
    if !config["env"].is_object() {
        config["env"] = json!({});
    }
    for (k, v) in env {
        config["env"][*k] = json!(v);
    }
    for (k, v) in defaults {
        if config["env"].get(*k).is_none() {
            config["env"][*k] = json!(v);
        }
    }
    Ok(config.to_string())
}

/// Reads the CNI's owner, version and env.
pub async fn discover(
    eks: &aws_sdk_eks::Client,
    client: &Client,
    cluster: &str,
    deadline: Instant,
) -> Result<CniFacts, CniError> {
    let addon = match eks
        .describe_addon()
        .cluster_name(cluster)
        .addon_name(ADDON)
        .send()
        .await
    {
        Ok(out) => out.addon().cloned(),
        Err(err) => {
            let err = AwsError::from_sdk("DescribeAddon", &format!("{cluster}/{ADDON}"), err);
            if err.code != "ResourceNotFoundException" {
                return Err(err.into());
            }
            None
        }
    };

    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let daemon_set = match retrying(deadline, || daemon_sets.get(DAEMON_SET)).await {
        Ok(ds) => Some(ds),
        Err(err) if status_code(&err) == Some(404) => None,
        Err(source) => {
            return Err(CniError::Kube {
                operation: "get",
                source,
            });
        }
    };
    let container = daemon_set
        .as_ref()
        .and_then(|ds| ds.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER).cloned());
    let mut env: BTreeMap<String, String> = container
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let image_version = container
        .as_ref()
        .and_then(|c| c.image.as_deref())
        .and_then(|i| i.rsplit(':').next())
        .and_then(Version::parse);

    match addon {
        Some(addon) => {
            let configuration = addon.configuration_values().map(str::to_owned);
            let configured = parse_configuration(configuration.as_deref().unwrap_or(""))
                .map_err(CniError::Configuration)?;
            for (k, v) in configured["env"].as_object().into_iter().flatten() {
                if let Some(v) = v.as_str() {
                    env.insert(k.clone(), v.to_owned());
                }
            }
            let version = addon.addon_version().unwrap_or_default().to_owned();
            Ok(CniFacts {
                version: Version::parse(&version).or(image_version),
                owner: Owner::ManagedAddon {
                    version,
                    configuration,
                },
                env,
            })
        }
        None => Ok(CniFacts {
            owner: Owner::SelfManaged,
            version: image_version,
            env,
        }),
    }
}

/// Sets env variables where the owner expects them. `defaults` are set only when absent.
/// Returns a description of the change.
pub async fn set_env(
    eks: &aws_sdk_eks::Client,
    client: &Client,
    cluster: &str,
    facts: &CniFacts,
    env: &[(&str, &str)],
    defaults: &[(&str, &str)],
    deadline: Instant,
) -> Result<String, CniError> {
    match &facts.owner {
        Owner::ManagedAddon { configuration, .. } => {
            let values = merged_configuration(configuration.as_deref(), env, defaults)
                .map_err(CniError::Configuration)?;
            let update = eks
                .update_addon()
                .cluster_name(cluster)
                .addon_name(ADDON)
                .configuration_values(&values)
                // Keep what operators changed by hand elsewhere in the DaemonSet.
                .resolve_conflicts(aws_sdk_eks::types::ResolveConflicts::Preserve)
                .send()
                .await
                .map_err(aws_err("UpdateAddon", &format!("{cluster}/{ADDON}")))?;
            let changed: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok(format!(
                "UpdateAddon vpc-cni, configuration values merged with {} (update {})",
                changed.join(", "),
                update.update().and_then(|u| u.id()).unwrap_or("?")
            ))
        }
        Owner::SelfManaged => {
            let mut vars: Vec<Value> = env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            vars.extend(
                defaults
                    .iter()
                    .filter(|(k, _)| !facts.env.contains_key(*k))
                    .map(|(k, v)| json!({"name": k, "value": v})),
            );
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": CONTAINER, "env": vars}
            ]}}}});
            let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
            let params = PatchParams::default();
            let patch = Patch::Strategic(&patch);
            retrying(deadline, || daemon_sets.patch(DAEMON_SET, &params, &patch))
                .await
                .map_err(|source| CniError::Kube {
                    operation: "patch",
                    source,
                })?;
            Ok(format!(
                "strategic merge patch of kube-system/aws-node container aws-node env: {}",
                env.iter()
                    .chain(defaults.iter())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_addon_versions_and_image_tags() {
        assert_eq!(
            Version::parse("v1.18.3-eksbuild.1"),
            Some(Version(1, 18, 3))
        );
        assert_eq!(Version::parse("v1.9.0"), Some(Version(1, 9, 0)));
        assert!(Version::parse("v1.8.0").unwrap() < Version(1, 9, 0));
        assert_eq!(Version::parse("latest"), None);
    }

    #[test]
    fn merging_keeps_existing_values_and_respects_set_defaults() {
        let merged = merged_configuration(
            Some(r#"{"env":{"WARM_IP_TARGET":"5","WARM_PREFIX_TARGET":"2"},"nodeAgent":{"enablePolicyEventLogs":"true"}}"#),
            &[("ENABLE_PREFIX_DELEGATION", "true")],
            &[("WARM_PREFIX_TARGET", "1")],
        )
        .unwrap();
        let v: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["env"]["ENABLE_PREFIX_DELEGATION"], "true");
        assert_eq!(v["env"]["WARM_IP_TARGET"], "5");
        assert_eq!(v["env"]["WARM_PREFIX_TARGET"], "2");
        assert_eq!(v["nodeAgent"]["enablePolicyEventLogs"], "true");
    }

    #[test]
    fn yaml_configuration_values_are_understood() {
        let merged = merged_configuration(
            Some("env:\n  AWS_VPC_K8S_CNI_LOGLEVEL: DEBUG\n"),
            &[("ENABLE_PREFIX_DELEGATION", "true")],
            &[],
        )
        .unwrap();
        assert!(merged.contains("AWS_VPC_K8S_CNI_LOGLEVEL"));
    }
}
