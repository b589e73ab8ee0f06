//! The volume-attach function: volumes that cannot be provisioned or attached because an add-on
//! controller has no AWS credentials (fixed with an EKS Pod Identity association), and volumes
//! held by a node that died without a drain (released with the out-of-service taint, a stale
//! VolumeAttachment removed, a force-detach when configured).
//!
//! Triggers: CloudTrail `AttachVolume`/`CreateVolume` errors, `EBS Volume Notification`
//! failures, CloudWatch alarms naming a cluster, a schedule (EventBridge `Scheduled Event`), or
//! a direct `{"cluster": "name"}`. Each becomes a sweep of the cluster, because the
//! no-credentials case never reaches EC2 and leaves no AWS event.

pub mod identity;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::access::ClusterAccess;
use crate::aws::{AwsClients, AwsError, ClusterFacts, aws_err, describe_instance};
use crate::cni::Version;
use crate::config::Config;
use crate::events::{EventError, is_alarm, parse_alarm};
use crate::invocation::{
    Function, HandlerError, InvocationResult, admit_cluster, dispatch, kube_err,
};
use crate::nodes::{self, is_ready, retrying, status_code};
use crate::report::{Notifier, Outcome, Report, StepResult};
use identity::{
    AGENT_ADDON, AddonIdentity, CredentialFailure, KNOWN_ADDONS, credential_failure,
    trusts_pod_identity,
};

const KIND: &str = "volume-attach";
/// Marks an out-of-service taint eks-remedy added for a lost volume, so it removes only its own.
pub const TAINT_ANNOTATION: &str = "eks-remedy.io/out-of-service-for-volumes";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The env the Pod Identity webhook injects into pods of an associated service account.
const POD_IDENTITY_ENV: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";

/// One change.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    InstallAgent,
    CreateRole {
        addon: &'static AddonIdentity,
        name: String,
    },
    CreateAssociation {
        addon: &'static AddonIdentity,
        role_arn: String,
    },
    UpdateAssociation {
        addon: &'static AddonIdentity,
        id: String,
        role_arn: String,
    },
    RestartController {
        addon: &'static AddonIdentity,
    },
    OutOfServiceTaint {
        node: String,
    },
    RemoveOutOfServiceTaint {
        node: String,
    },
    DeleteVolumeAttachment {
        name: String,
    },
    ForceDetach {
        volume: String,
        instance: String,
    },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Self::InstallAgent => "install-pod-identity-agent",
            Self::CreateRole { .. } => "create-role",
            Self::CreateAssociation { .. } => "create-pod-identity-association",
            Self::UpdateAssociation { .. } => "update-pod-identity-association",
            Self::RestartController { .. } => "restart-controller",
            Self::OutOfServiceTaint { .. } => "taint-out-of-service",
            Self::RemoveOutOfServiceTaint { .. } => "remove-out-of-service-taint",
            Self::DeleteVolumeAttachment { .. } => "delete-volume-attachment",
            Self::ForceDetach { .. } => "force-detach-volume",
        }
    }
}

/// What a sweep found and decided.
#[derive(Debug, Default)]
struct Findings {
    steps: Vec<(Step, String)>,
    blockers: Vec<String>,
    notes: Vec<String>,
    next_steps: Vec<String>,
    facts: Vec<(String, String)>,
}

/// The volume-attach handler with its clients, built once per cold start.
pub struct VolumeAttach {
    pub aws: AwsClients,
    pub iam: aws_sdk_iam::Client,
    pub access: ClusterAccess,
    pub config: Config,
    pub notifier: Notifier,
}

/// The add-on an event is about, from its reporter and message.
fn addon_of(event: &Event) -> Option<&'static AddonIdentity> {
    let text = format!(
        "{} {} {}",
        event
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .unwrap_or_default(),
        event.reporting_component.clone().unwrap_or_default(),
        event.message.clone().unwrap_or_default()
    );
    identity::addon_for(&text)
}

/// When an event last happened, whichever API wrote it.
fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    let stamp = e
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))?;
    DateTime::from_timestamp(stamp.as_second(), 0)
}

impl Function for VolumeAttach {
    fn new(aws: AwsClients, access: ClusterAccess, config: Config) -> Self {
        let notifier = Notifier::new(aws.sns.clone(), config.topic_arn.clone());
        let iam = aws_sdk_iam::Client::new(&aws.sdk);
        Self {
            aws,
            iam,
            access,
            config,
            notifier,
        }
    }

    /// Handles one Lambda payload.
    async fn handle(
        &self,
        payload: &Value,
        invocation_deadline: Option<Instant>,
    ) -> Result<InvocationResult, HandlerError> {
        let until = invocation_deadline.unwrap_or_else(|| Instant::now() + self.config.max_drain);
        dispatch(
            payload,
            Some("cluster"),
            |event| async move { self.clusters_for(&event).await },
            |(cluster, why): (String, String)| async move {
                self.sweep(&cluster, &why, until).await.map(|r| vec![r])
            },
        )
        .await
    }
}

impl VolumeAttach {
    /// The clusters an event asks to sweep, with why.
    async fn clusters_for(&self, event: &Value) -> Result<Vec<(String, String)>, EventError> {
        if let Some(cluster) = event
            .get("cluster")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            return Ok(vec![(cluster.to_owned(), "requested".into())]);
        }
        if is_alarm(event) {
            let alarm = parse_alarm(event)?;
            if alarm.state != "ALARM" {
                return Ok(Vec::new());
            }
            if alarm.clusters.is_empty() {
                return Err(EventError::Invalid {
                    kind: "volume alarm",
                    reason: format!("alarm {} names no cluster", alarm.alarm_name),
                });
            }
            return Ok(alarm
                .clusters
                .into_iter()
                .map(|c| (c, format!("alarm {}", alarm.alarm_name)))
                .collect());
        }
        let source = event["source"].as_str().unwrap_or_default();
        let detail_type = event["detail-type"].as_str().unwrap_or_default();
        let invalid = |reason: String| EventError::Invalid {
            kind: "volume event",
            reason,
        };
        match (source, detail_type) {
            ("aws.events", "Scheduled Event") => Ok(self
                .config_clusters()
                .into_iter()
                .map(|c| (c, "scheduled sweep".into()))
                .collect()),
            ("aws.ec2", "AWS API Call via CloudTrail") => {
                let detail = &event["detail"];
                let name = detail["eventName"].as_str().unwrap_or_default();
                if !matches!(name, "AttachVolume" | "CreateVolume")
                    || detail["errorCode"].as_str().is_none()
                {
                    return Err(invalid(format!(
                        "CloudTrail {name} without an error is not a volume failure"
                    )));
                }
                let why = format!(
                    "CloudTrail {name} {}",
                    detail["errorCode"].as_str().unwrap_or_default()
                );
                let instance = detail["requestParameters"]["instanceId"].as_str();
                let volume = detail["requestParameters"]["volumeId"].as_str();
                let cluster = self
                    .cluster_of(instance, volume)
                    .await
                    .map_err(|e| invalid(e.to_string()))?;
                Ok(cluster.map(|c| vec![(c, why)]).unwrap_or_default())
            }
            ("aws.ec2", "EBS Volume Notification") => {
                if event["detail"]["result"] != "failed" {
                    return Ok(Vec::new());
                }
                let volume = event["resources"]
                    .as_array()
                    .and_then(|r| r.first())
                    .and_then(Value::as_str)
                    .and_then(|arn| arn.rsplit('/').next())
                    .map(str::to_owned);
                let why = format!(
                    "EBS {} failed",
                    event["detail"]["event"].as_str().unwrap_or("volume event")
                );
                let cluster = self
                    .cluster_of(None, volume.as_deref())
                    .await
                    .map_err(|e| invalid(e.to_string()))?;
                Ok(cluster.map(|c| vec![(c, why)]).unwrap_or_default())
            }
            _ => Err(EventError::Unsupported {
                event_source: source.into(),
                detail_type: detail_type.into(),
            }),
        }
    }

    fn config_clusters(&self) -> Vec<String> {
        match &self.config.clusters {
            crate::config::ClusterAllowList::Names(names) => names.iter().cloned().collect(),
            // Limitation: with `*` a scheduled sweep has no list to walk; name the clusters.
            crate::config::ClusterAllowList::All => Vec::new(),
        }
    }

    /// The cluster of an instance (by its tags) or of a volume (by the EBS CSI driver's tags).
    async fn cluster_of(
        &self,
        instance: Option<&str>,
        volume: Option<&str>,
    ) -> Result<Option<String>, AwsError> {
        if let Some(id) = instance
            && let Some(facts) = describe_instance(&self.aws.ec2, id).await?
            && let Some(cluster) = facts.cluster()
        {
            return Ok(Some(cluster));
        }
        let Some(volume) = volume else {
            return Ok(None);
        };
        let out = match self
            .aws
            .ec2
            .describe_volumes()
            .volume_ids(volume)
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                let err = AwsError::from_sdk("DescribeVolumes", volume, err);
                if err.code.starts_with("InvalidVolume") {
                    return Ok(None);
                }
                return Err(err);
            }
        };
        let tags: BTreeMap<String, String> = out
            .volumes()
            .iter()
            .flat_map(|v| v.tags())
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        if let Some(id) = out
            .volumes()
            .first()
            .and_then(|v| v.attachments().first())
            .and_then(|a| a.instance_id())
            && let Some(facts) = describe_instance(&self.aws.ec2, id).await?
            && let Some(cluster) = facts.cluster()
        {
            return Ok(Some(cluster));
        }
        Ok(tags
            .iter()
            .find_map(|(k, v)| {
                k.strip_prefix("kubernetes.io/cluster/")
                    .filter(|_| v == "owned")
                    .map(str::to_owned)
            })
            .or_else(|| tags.get("KubernetesCluster").cloned()))
    }

    async fn sweep(
        &self,
        cluster: &str,
        why: &str,
        until: Instant,
    ) -> Result<Report, HandlerError> {
        let mut report = Report {
            kind: KIND.into(),
            cluster: Some(cluster.to_owned()),
            dry_run: self.config.dry_run,
            incident_id: format!("{cluster}/{KIND}/{}", Utc::now().format("%Y%m%d")),
            event_id: why.to_owned(),
            ..Report::default()
        };
        let cluster_facts =
            match admit_cluster(&self.aws, &self.access, &self.config, cluster).await? {
                Ok(facts) => facts,
                Err(why) => return Ok(self.done(report, Outcome::Ignored, why, false).await),
            };
        let client = self
            .access
            .client(
                &cluster_facts,
                until.saturating_duration_since(Instant::now()),
            )
            .await?;

        let events: Api<Event> = Api::all(client.clone());
        let mut failures = Vec::new();
        for reason in ["ProvisioningFailed", "FailedAttachVolume"] {
            let params = ListParams::default().fields(&format!("reason={reason}"));
            failures.extend(
                retrying(until, || events.list(&params))
                    .await
                    .map_err(kube_err("list events"))?
                    .items,
            );
        }

        let mut findings = Findings::default();
        self.find_identity_problems(
            cluster,
            &cluster_facts,
            &client,
            &failures,
            until,
            &mut findings,
        )
        .await?;
        self.find_lost_nodes(&client, &failures, until, &mut findings)
            .await?;
        report.facts = std::mem::take(&mut findings.facts);
        report.notes = std::mem::take(&mut findings.notes);
        report.next_steps = std::mem::take(&mut findings.next_steps);
        report
            .notes
            .extend(findings.blockers.iter().map(|b| format!("Cannot fix: {b}")));
        tracing::info!(cluster, trigger = why, actions = ?findings.steps.iter().map(|(s, _)| s.name()).collect::<Vec<_>>(),
            blockers = findings.blockers.len(), dry_run = self.config.dry_run, "decision");

        if findings.steps.is_empty() {
            let (outcome, summary, publish) = if findings.blockers.is_empty() {
                (
                    Outcome::Skipped,
                    format!("No volume failure to fix in {cluster}."),
                    false,
                )
            } else {
                (
                    Outcome::NeedsAttention,
                    format!(
                        "Volume failures in {cluster} that eks-remedy cannot fix: {}",
                        findings.blockers.join("; ")
                    ),
                    true,
                )
            };
            return Ok(self.done(report, outcome, summary, publish).await);
        }

        let mut failure = None;
        for (step, reason) in findings.steps {
            let result = if self.config.dry_run {
                Ok("dry-run".to_owned())
            } else {
                self.apply(&step, cluster, &cluster_facts, &client, until)
                    .await
            };
            tracing::info!(cluster, action = step.name(), outcome = if result.is_ok() { "done" } else { "failed" }, reason = %reason, "action");
            let text = result.unwrap_or_else(|e| {
                failure.get_or_insert(format!("{} failed: {e}", step.name()));
                format!("failed: {e}")
            });
            report.steps.push(StepResult {
                step: crate::plan::Step {
                    action: crate::plan::Action::Remediation {
                        name: step.name().into(),
                    },
                    reason,
                },
                result: text,
            });
        }
        let done: Vec<&str> = report.steps.iter().map(|s| s.step.action.name()).collect();
        let (outcome, summary) = match failure {
            Some(f) => (Outcome::Failed, f),
            None => (
                Outcome::Remediated,
                format!("Volume failures in {cluster} fixed: {}.", done.join(", ")),
            ),
        };
        let summary = if self.config.dry_run {
            format!("Dry run, nothing changed. {summary}")
        } else {
            summary
        };
        Ok(self.done(report, outcome, summary, true).await)
    }

    #[allow(clippy::too_many_arguments)]
    async fn find_identity_problems(
        &self,
        cluster: &str,
        cluster_facts: &ClusterFacts,
        client: &Client,
        failures: &[Event],
        until: Instant,
        f: &mut Findings,
    ) -> Result<(), HandlerError> {
        // Group fresh credential failures by add-on.
        let mut by_addon: BTreeMap<
            &'static str,
            (&'static AddonIdentity, BTreeSet<String>, CredentialFailure),
        > = BTreeMap::new();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
        for event in failures {
            let message = event.message.clone().unwrap_or_default();
            let Some(kind) = credential_failure(&message) else {
                continue;
            };
            let Some(addon) = addon_of(event) else {
                f.notes.push(format!(
                    "a credential failure from a driver eks-remedy does not know is left alone: {message}"
                ));
                continue;
            };
            let entry = by_addon
                .entry(addon.addon)
                .or_insert((addon, BTreeSet::new(), kind));
            entry.1.insert(format!(
                "{}/{}",
                event.involved_object.namespace.clone().unwrap_or_default(),
                event.involved_object.name.clone().unwrap_or_default()
            ));
            entry.2 = entry.2.max_severity(kind);
        }
        for (addon, objects, kind) in by_addon.into_values() {
            let deployment = match retrying(until, || deployments.get(addon.deployment)).await {
                Ok(d) => Some(d),
                Err(err) if status_code(&err) == Some(404) => None,
                Err(err) => return Err(kube_err("get the controller Deployment")(err)),
            };
            // Failures from before the last restart are history: the controller has new pods.
            let restarted: Option<DateTime<Utc>> = deployment
                .as_ref()
                .and_then(|d| {
                    d.spec
                        .as_ref()?
                        .template
                        .metadata
                        .as_ref()?
                        .annotations
                        .as_ref()?
                        .get(RESTARTED_AT)
                        .cloned()
                })
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc));
            let fresh: Vec<&Event> = failures
                .iter()
                .filter(|e| {
                    credential_failure(e.message.as_deref().unwrap_or_default()).is_some()
                        && addon_of(e).is_some_and(|a| a.addon == addon.addon)
                        && restarted.is_none_or(|r| event_time(e).is_none_or(|t| t > r))
                })
                .collect();
            if fresh.is_empty() {
                f.notes.push(format!(
                    "{} credential failures predate the {} restart at {}: waiting for the new pods",
                    objects.len(),
                    addon.deployment,
                    restarted.map(|r| r.to_rfc3339()).unwrap_or_default()
                ));
                self.verify_controller(client, addon, until, f).await?;
                continue;
            }
            f.facts.push((
                format!("{} failures", addon.addon),
                format!(
                    "{} ({})",
                    objects.iter().cloned().collect::<Vec<_>>().join(", "),
                    match kind {
                        CredentialFailure::Missing => "no AWS credentials",
                        CredentialFailure::Denied => "access denied",
                        CredentialFailure::DriverTooOld => "driver too old for Pod Identity",
                    }
                ),
            ));
            self.plan_identity(
                cluster,
                cluster_facts,
                client,
                addon,
                kind,
                deployment.is_some(),
                until,
                f,
            )
            .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn plan_identity(
        &self,
        cluster: &str,
        cluster_facts: &ClusterFacts,
        client: &Client,
        addon: &'static AddonIdentity,
        kind: CredentialFailure,
        has_deployment: bool,
        until: Instant,
        f: &mut Findings,
    ) -> Result<(), HandlerError> {
        let version = match self.addon_version(cluster, addon.addon).await? {
            Some(v) => Some(v),
            None if has_deployment => None,
            None => {
                f.blockers.push(format!(
                    "{} is not installed (no add-on, no {} Deployment)",
                    addon.addon, addon.deployment
                ));
                return Ok(());
            }
        };
        let parsed = version.as_deref().and_then(Version::parse);
        f.facts.push((
            addon.addon.to_owned(),
            version.clone().unwrap_or_else(|| "self-managed".into()),
        ));
        if kind == CredentialFailure::DriverTooOld
            || parsed.is_some_and(|v| v < addon.pod_identity_since)
        {
            f.blockers.push(format!(
                "{} {} is older than {}, the first that reads Pod Identity credentials",
                addon.addon,
                version.unwrap_or_default(),
                addon.pod_identity_since
            ));
            f.next_steps.push(format!(
                "Upgrade the {} add-on to {} or later first, then run eks-remedy again.",
                addon.addon, addon.pod_identity_since
            ));
            return Ok(());
        }

        let service_accounts: Api<ServiceAccount> =
            Api::namespaced(client.clone(), addon.namespace);
        let irsa = match retrying(until, || service_accounts.get(addon.service_account)).await {
            Ok(sa) => sa
                .metadata
                .annotations
                .and_then(|a| a.get("eks.amazonaws.com/role-arn").cloned()),
            Err(err) if status_code(&err) == Some(404) => None,
            Err(err) => return Err(kube_err("get the service account")(err)),
        };
        if let Some(role) = &irsa {
            f.notes.push(format!("{}/{} carries the IRSA annotation {role}; a Pod Identity association takes precedence for new pods (remove the annotation once they run)", addon.namespace, addon.service_account));
        }

        if self.addon_version(cluster, AGENT_ADDON).await?.is_none() {
            f.steps.push((
                Step::InstallAgent,
                "the Pod Identity agent serves credentials on each node".into(),
            ));
        }

        let existing = self.association(cluster, addon).await?;
        let configured = self.configured_role(addon);
        let desired = match (&configured, &existing) {
            (Some(role), _) => role.clone(),
            (None, Some((_, role))) => role.clone(),
            (None, None) if self.config.allow_role_creation && addon.policy_arn.is_some() => {
                let account = cluster_facts
                    .arn
                    .as_deref()
                    .and_then(|a| a.split(':').nth(4))
                    .unwrap_or_default();
                let name = format!("{cluster}-{}", addon.deployment);
                let role_arn = format!("arn:aws:iam::{account}:role/eks-remedy/{name}");
                if self.role_exists(&name).await? {
                    role_arn
                } else {
                    f.steps.push((
                        Step::CreateRole { addon, name },
                        format!(
                            "no role is configured for {}/{}; role creation is allowed",
                            addon.namespace, addon.service_account
                        ),
                    ));
                    role_arn
                }
            }
            (None, None) => {
                f.blockers.push(format!("no IAM role for {}/{}: none configured (EKS_REMEDY_POD_IDENTITY_ROLES) and role creation is off", addon.namespace, addon.service_account));
                f.next_steps.push(format!("Create a role that trusts pods.eks.amazonaws.com (sts:AssumeRole, sts:TagSession) with {}, and name it in EKS_REMEDY_POD_IDENTITY_ROLES.", addon.policy_arn.unwrap_or("the controller's policy")));
                return Ok(());
            }
        };
        if !f
            .steps
            .iter()
            .any(|(s, _)| matches!(s, Step::CreateRole { .. }))
            && let Some(problem) = self.role_problem(&desired, addon).await?
        {
            f.blockers.push(problem);
            return Ok(());
        }
        let mut associated = false;
        match existing {
            None => {
                f.steps.push((
                    Step::CreateAssociation {
                        addon,
                        role_arn: desired.clone(),
                    },
                    format!(
                        "{}/{} has no Pod Identity association",
                        addon.namespace, addon.service_account
                    ),
                ));
                associated = true;
            }
            Some((id, role)) if role != desired => {
                f.steps.push((
                    Step::UpdateAssociation {
                        addon,
                        id,
                        role_arn: desired.clone(),
                    },
                    format!("the association uses {role}, the configured role is {desired}"),
                ));
                associated = true;
            }
            Some(_) => {}
        }
        if associated || kind == CredentialFailure::Missing {
            f.steps.push((
                Step::RestartController { addon },
                "running pods keep the credentials they started with".into(),
            ));
        }
        if kind == CredentialFailure::Denied && !associated {
            f.blockers.push(format!(
                "{} has credentials but is denied: check the role's policies",
                addon.addon
            ));
        }
        Ok(())
    }

    async fn verify_controller(
        &self,
        client: &Client,
        addon: &AddonIdentity,
        until: Instant,
        f: &mut Findings,
    ) -> Result<(), HandlerError> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), addon.namespace);
        let params = ListParams::default().labels(&format!("app={}", addon.deployment));
        let list = retrying(until, || pods.list(&params))
            .await
            .map_err(kube_err("list controller pods"))?;
        let with_env = list
            .items
            .iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers.iter().any(|c| {
                        c.env
                            .as_ref()
                            .is_some_and(|e| e.iter().any(|e| e.name == POD_IDENTITY_ENV))
                    })
                })
            })
            .count();
        f.facts.push((
            format!("{} pods with Pod Identity credentials", addon.deployment),
            format!("{with_env} of {}", list.items.len()),
        ));
        Ok(())
    }

    fn configured_role(&self, addon: &AddonIdentity) -> Option<String> {
        let key = format!("{}/{}=", addon.namespace, addon.service_account);
        self.config
            .pod_identity_roles
            .iter()
            .find_map(|r| r.strip_prefix(&key).map(str::to_owned))
            .or_else(|| {
                self.config
                    .pod_identity_roles
                    .iter()
                    .find(|r| !r.contains('='))
                    .cloned()
            })
    }

    async fn addon_version(&self, cluster: &str, addon: &str) -> Result<Option<String>, AwsError> {
        match self
            .aws
            .eks
            .describe_addon()
            .cluster_name(cluster)
            .addon_name(addon)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.addon()
                    .and_then(|a| a.addon_version())
                    .unwrap_or_default()
                    .to_owned(),
            )),
            Err(err) => {
                let err = AwsError::from_sdk("DescribeAddon", &format!("{cluster}/{addon}"), err);
                if err.code == "ResourceNotFoundException" {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The association of the add-on's service account: (id, role ARN).
    async fn association(
        &self,
        cluster: &str,
        addon: &AddonIdentity,
    ) -> Result<Option<(String, String)>, AwsError> {
        let list = self
            .aws
            .eks
            .list_pod_identity_associations()
            .cluster_name(cluster)
            .namespace(addon.namespace)
            .service_account(addon.service_account)
            .send()
            .await
            .map_err(aws_err("ListPodIdentityAssociations", cluster))?;
        let Some(id) = list
            .associations()
            .iter()
            .find(|a| a.service_account() == Some(addon.service_account))
            .and_then(|a| a.association_id())
        else {
            return Ok(None);
        };
        let described = self
            .aws
            .eks
            .describe_pod_identity_association()
            .cluster_name(cluster)
            .association_id(id)
            .send()
            .await
            .map_err(aws_err("DescribePodIdentityAssociation", id))?;
        Ok(Some((
            id.to_owned(),
            described
                .association()
                .and_then(|a| a.role_arn())
                .unwrap_or_default()
                .to_owned(),
        )))
    }

    async fn role_exists(&self, name: &str) -> Result<bool, AwsError> {
        match self.iam.get_role().role_name(name).send().await {
            Ok(_) => Ok(true),
            Err(err) => {
                let err = AwsError::from_sdk("GetRole", name, err);
                if err.code == "NoSuchEntity" {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Why a role cannot serve the add-on (missing, no trust, no policy), if it cannot.
    async fn role_problem(
        &self,
        role_arn: &str,
        addon: &AddonIdentity,
    ) -> Result<Option<String>, AwsError> {
        let name = role_arn.rsplit('/').next().unwrap_or(role_arn);
        let role = match self.iam.get_role().role_name(name).send().await {
            Ok(out) => out.role().cloned(),
            Err(err) => {
                let err = AwsError::from_sdk("GetRole", name, err);
                if err.code == "NoSuchEntity" {
                    return Ok(Some(format!("role {role_arn} does not exist")));
                }
                return Err(err);
            }
        };
        let document = role
            .as_ref()
            .and_then(|r| r.assume_role_policy_document())
            .unwrap_or_default();
        let decoded = url::form_urlencoded::parse(format!("d={document}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let trust: Value = serde_json::from_str(&decoded)
            .or_else(|_| serde_json::from_str(document))
            .unwrap_or(Value::Null);
        if !trusts_pod_identity(&trust) {
            return Ok(Some(format!(
                "role {role_arn} does not trust pods.eks.amazonaws.com with sts:AssumeRole and sts:TagSession"
            )));
        }
        if let Some(policy) = addon.policy_arn {
            let attached = self
                .iam
                .list_attached_role_policies()
                .role_name(name)
                .send()
                .await
                .map_err(aws_err("ListAttachedRolePolicies", name))?;
            if !attached
                .attached_policies()
                .iter()
                .any(|p| p.policy_arn() == Some(policy))
            {
                return Ok(Some(format!("role {role_arn} lacks {policy}")));
            }
        }
        Ok(None)
    }

    async fn find_lost_nodes(
        &self,
        client: &Client,
        failures: &[Event],
        until: Instant,
        f: &mut Findings,
    ) -> Result<(), HandlerError> {
        let attachments: Api<VolumeAttachment> = Api::all(client.clone());
        let nodes_api: Api<Node> = Api::all(client.clone());
        let list_params = ListParams::default();
        let vas = retrying(until, || attachments.list(&list_params))
            .await
            .map_err(kube_err("list VolumeAttachments"))?
            .items;
        let node_names: BTreeSet<String> = retrying(until, || nodes_api.list(&list_params))
            .await
            .map_err(kube_err("list nodes"))?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();

        // Volumes other pods cannot attach: Multi-Attach errors name the PersistentVolume.
        let mut held: BTreeSet<String> = BTreeSet::new();
        for event in failures {
            let message = event.message.as_deref().unwrap_or_default();
            if let Some(rest) = message.strip_prefix("Multi-Attach error for volume \"")
                && let Some(pv) = rest.split('"').next()
            {
                held.insert(pv.to_owned());
            }
        }
        let mut tainted: BTreeSet<String> = BTreeSet::new();
        for va in &vas {
            let name = va.metadata.name.clone().unwrap_or_default();
            let node = &va.spec.node_name;
            let pv = va
                .spec
                .source
                .persistent_volume_name
                .clone()
                .unwrap_or_default();
            // Only attachments of volumes a pod failed to attach are touched: deleting one makes
            // the attacher detach the volume, which must never hit a volume still in use.
            if !held.contains(&pv) {
                continue;
            }
            if !node_names.contains(node) {
                f.steps.push((
                    Step::DeleteVolumeAttachment { name: name.clone() },
                    format!("it attaches {pv} to node {node}, which no longer exists"),
                ));
                if self.config.allow_force_detach {
                    self.plan_force_detach(client, &pv, until, f).await?;
                }
                continue;
            }
            if tainted.contains(node) {
                continue;
            }
            let node_obj = retrying(until, || nodes_api.get(node))
                .await
                .map_err(kube_err("get node"))?;
            if is_ready(&node_obj) {
                f.blockers.push(format!("{pv} is attached to {node}, which is Ready: eks-remedy never detaches from a running node"));
                continue;
            }
            if nodes::taints(&node_obj)
                .iter()
                .any(|t| t.key == nodes::OUT_OF_SERVICE_TAINT_KEY)
            {
                continue;
            }
            let state = match nodes::instance_id_of(&node_obj) {
                Some(id) => describe_instance(&self.aws.ec2, id)
                    .await?
                    .map(|i| i.state)
                    .unwrap_or_else(|| "terminated".into()),
                None => "unknown".into(),
            };
            // Only an instance that is really off: the taint force-deletes pods and detaches
            // volumes at once, which corrupts file systems still being written.
            if matches!(state.as_str(), "stopped" | "terminated") {
                tainted.insert(node.clone());
                f.steps.push((
                    Step::OutOfServiceTaint { node: node.clone() },
                    format!("{pv} is held by {node}: NotReady and its instance is {state}"),
                ));
            } else {
                f.blockers.push(format!("{pv} is held by {node}: NotReady but its instance is {state}; waiting for the node lifecycle controller"));
            }
        }

        // Taints eks-remedy added come off once the node is back.
        let list = retrying(until, || nodes_api.list(&list_params))
            .await
            .map_err(kube_err("list nodes"))?;
        for node in list.items {
            let ours = node
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(TAINT_ANNOTATION));
            if ours
                && is_ready(&node)
                && nodes::taints(&node)
                    .iter()
                    .any(|t| t.key == nodes::OUT_OF_SERVICE_TAINT_KEY)
            {
                let name = node.metadata.name.clone().unwrap_or_default();
                f.steps.push((
                    Step::RemoveOutOfServiceTaint { node: name.clone() },
                    format!("{name} is Ready again"),
                ));
            }
        }
        Ok(())
    }

    async fn plan_force_detach(
        &self,
        client: &Client,
        pv: &str,
        until: Instant,
        f: &mut Findings,
    ) -> Result<(), HandlerError> {
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        let volume = match retrying(until, || pvs.get(pv)).await {
            Ok(p) => p.spec.and_then(|s| s.csi).map(|c| c.volume_handle),
            Err(err) if status_code(&err) == Some(404) => None,
            Err(err) => return Err(kube_err("get PersistentVolume")(err)),
        };
        let Some(volume) = volume else { return Ok(()) };
        let out = self
            .aws
            .ec2
            .describe_volumes()
            .volume_ids(&volume)
            .send()
            .await
            .map_err(aws_err("DescribeVolumes", &volume))?;
        for attachment in out.volumes().iter().flat_map(|v| v.attachments()) {
            let Some(instance) = attachment.instance_id() else {
                continue;
            };
            let state = describe_instance(&self.aws.ec2, instance)
                .await?
                .map(|i| i.state)
                .unwrap_or_default();
            if state == "stopped" {
                f.steps.push((Step::ForceDetach { volume: volume.clone(), instance: instance.to_owned() }, format!("{volume} is still attached to stopped instance {instance} whose node is gone")));
            }
        }
        Ok(())
    }

    async fn apply(
        &self,
        step: &Step,
        cluster: &str,
        _facts: &ClusterFacts,
        client: &Client,
        until: Instant,
    ) -> Result<String, String> {
        let e = |err: &dyn std::fmt::Display| err.to_string();
        match step {
            Step::InstallAgent => {
                self.aws
                    .eks
                    .create_addon()
                    .cluster_name(cluster)
                    .addon_name(AGENT_ADDON)
                    .send()
                    .await
                    .map_err(aws_err("CreateAddon", AGENT_ADDON))
                    .map_err(|x| e(&x))?;
                Ok(format!("created add-on {AGENT_ADDON}"))
            }
            Step::CreateRole { addon, name } => {
                let trust = identity::pod_identity_trust_policy().to_string();
                self.iam
                    .create_role()
                    .role_name(name)
                    .path("/eks-remedy/")
                    .assume_role_policy_document(trust)
                    .description(format!(
                        "Pod Identity role for {}/{} in {cluster}, created by eks-remedy",
                        addon.namespace, addon.service_account
                    ))
                    .send()
                    .await
                    .map_err(aws_err("CreateRole", name))
                    .map_err(|x| e(&x))?;
                if let Some(policy) = addon.policy_arn {
                    self.iam
                        .attach_role_policy()
                        .role_name(name)
                        .policy_arn(policy)
                        .send()
                        .await
                        .map_err(aws_err("AttachRolePolicy", name))
                        .map_err(|x| e(&x))?;
                }
                Ok(format!("created role {name}"))
            }
            Step::CreateAssociation { addon, role_arn } => {
                let result = self
                    .aws
                    .eks
                    .create_pod_identity_association()
                    .cluster_name(cluster)
                    .namespace(addon.namespace)
                    .service_account(addon.service_account)
                    .role_arn(role_arn)
                    .send()
                    .await;
                match result {
                    Ok(out) => Ok(format!(
                        "association {} for {}/{} with {role_arn}",
                        out.association()
                            .and_then(|a| a.association_id())
                            .unwrap_or("?"),
                        addon.namespace,
                        addon.service_account
                    )),
                    Err(err) => {
                        let err = AwsError::from_sdk("CreatePodIdentityAssociation", cluster, err);
                        // Another invocation created it first: compare and update if needed.
                        if err.code == "ResourceInUseException"
                            && let Ok(Some((id, role))) = self.association(cluster, addon).await
                        {
                            if &role == role_arn {
                                return Ok(format!("unchanged: association {id} exists"));
                            }
                            self.aws
                                .eks
                                .update_pod_identity_association()
                                .cluster_name(cluster)
                                .association_id(&id)
                                .role_arn(role_arn)
                                .send()
                                .await
                                .map_err(aws_err("UpdatePodIdentityAssociation", &id))
                                .map_err(|x| e(&x))?;
                            return Ok(format!("association {id} updated to {role_arn}"));
                        }
                        Err(err.to_string())
                    }
                }
            }
            Step::UpdateAssociation { id, role_arn, .. } => {
                self.aws
                    .eks
                    .update_pod_identity_association()
                    .cluster_name(cluster)
                    .association_id(id)
                    .role_arn(role_arn)
                    .send()
                    .await
                    .map_err(aws_err("UpdatePodIdentityAssociation", id))
                    .map_err(|x| e(&x))?;
                Ok(format!("association {id} now uses {role_arn}"))
            }
            Step::RestartController { addon } => {
                let deployments: Api<Deployment> = Api::namespaced(client.clone(), addon.namespace);
                let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
                let params = PatchParams::default();
                let patch = Patch::Strategic(&patch);
                retrying(until, || {
                    deployments.patch(addon.deployment, &params, &patch)
                })
                .await
                .map_err(|x| e(&x))?;
                Ok(format!(
                    "rollout restart of {}/{}",
                    addon.namespace, addon.deployment
                ))
            }
            Step::OutOfServiceTaint { node } => {
                let nodes_api: Api<Node> = Api::all(client.clone());
                // Ownership first: a taint without it would never be removed by eks-remedy,
                // while ownership without the taint is retried on the next sweep.
                let patch = json!({"metadata": {"annotations": {TAINT_ANNOTATION: Utc::now().to_rfc3339()}}});
                let params = PatchParams::default();
                let patch = Patch::Merge(&patch);
                retrying(until, || nodes_api.patch(node, &params, &patch))
                    .await
                    .map_err(|x| e(&x))?;
                nodes::add_taint(&nodes_api, node, &nodes::out_of_service_taint(), until)
                    .await
                    .map_err(|x| e(&x))?;
                Ok(format!("{node} tainted out-of-service"))
            }
            Step::RemoveOutOfServiceTaint { node } => {
                let nodes_api: Api<Node> = Api::all(client.clone());
                nodes::remove_taint(&nodes_api, node, nodes::OUT_OF_SERVICE_TAINT_KEY, until)
                    .await
                    .map_err(|x| e(&x))?;
                let patch = json!({"metadata": {"annotations": {TAINT_ANNOTATION: null}}});
                let params = PatchParams::default();
                let patch = Patch::Merge(&patch);
                retrying(until, || nodes_api.patch(node, &params, &patch))
                    .await
                    .map_err(|x| e(&x))?;
                Ok(format!("out-of-service taint removed from {node}"))
            }
            Step::DeleteVolumeAttachment { name } => {
                let api: Api<VolumeAttachment> = Api::all(client.clone());
                let params = DeleteParams::default();
                match retrying(until, || api.delete(name, &params)).await {
                    Ok(_) => Ok(format!("deleted VolumeAttachment {name}")),
                    Err(err) if status_code(&err) == Some(404) => {
                        Ok("unchanged: already gone".into())
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
            Step::ForceDetach { volume, instance } => {
                self.aws
                    .ec2
                    .detach_volume()
                    .volume_id(volume)
                    .instance_id(instance)
                    .force(true)
                    .send()
                    .await
                    .map_err(aws_err("DetachVolume", volume))
                    .map_err(|x| e(&x))?;
                Ok(format!("force-detached {volume} from {instance}"))
            }
        }
    }

    async fn done(
        &self,
        mut report: Report,
        outcome: Outcome,
        summary: String,
        publish: bool,
    ) -> Report {
        report.outcome = Some(outcome);
        report.summary = summary;
        tracing::info!(cluster = report.cluster.as_deref().unwrap_or(""), outcome = outcome.name(), reason = %report.summary, "decision");
        if publish && let Err(err) = self.notifier.publish(&report).await {
            tracing::error!(error = %err, "publishing the report failed");
        }
        report
    }
}

impl CredentialFailure {
    /// The failure that decides the fix when an add-on shows several.
    fn max_severity(self, other: Self) -> Self {
        use CredentialFailure::*;
        match (self, other) {
            (DriverTooOld, _) | (_, DriverTooOld) => DriverTooOld,
            (Missing, _) | (_, Missing) => Missing,
            _ => Denied,
        }
    }
}

/// Every add-on the table knows, for the RBAC manifest check.
pub fn known_deployments() -> Vec<&'static str> {
    KNOWN_ADDONS.iter().map(|a| a.deployment).collect()
}
