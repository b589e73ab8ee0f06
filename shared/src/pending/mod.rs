//! The pending-pods function: Pending pods diagnosed (pod-count limit, IP assignment, branch
//! ENIs, subnets, or not an IP problem), prefix delegation or Security Groups for Pods turned on
//! where the CNI's owner expects it, node replacement started when configured, and a report.
//!
//! Triggers: a CloudWatch alarm on Pending pods (ALARM diagnoses and fixes, OK verifies and
//! closes), or a direct invocation `{"cluster": "name"}` / `{"cluster": "name", "verify": true}`
//! from an operator or a schedule.

pub mod decide;
pub mod facts;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::access::ClusterAccess;
use crate::aws::{AwsClients, aws_err};
use crate::cni;
use crate::config::Config;
use crate::events::{AlarmChange, EventError, is_alarm, parse_alarm};
use crate::invocation::{
    Function, HandlerError, InvocationResult, admit_cluster, dispatch, kube_err,
};
use crate::nodes::{is_conflict, retrying, status_code};
use crate::report::{Notifier, Outcome, Report, StepResult};
use decide::{Decision, Settings, Step, VPC_RESOURCE_CONTROLLER_POLICY, decide};

/// The annotation on the `aws-node` DaemonSet that records an open pending-pods incident.
pub const ANNOTATION: &str = "eks-remedy.io/pending-pods-incident";
const KIND: &str = "pending-pods";

/// The incident record: one per episode of Pending pods, so repeated alarms thread together
/// and no fix is applied twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingIncident {
    pub id: String,
    pub opened_at: DateTime<Utc>,
    /// IP-related Pending pods when it opened.
    pub pending_before: u32,
    /// Steps already applied.
    pub actions: Vec<String>,
}

/// What was asked.
#[derive(Debug, Clone, PartialEq)]
enum Request {
    /// Diagnose and fix.
    Fix {
        cluster: String,
        thread: Option<String>,
        alarm: Option<String>,
    },
    /// Check whether the Pending pods were placed.
    Verify {
        cluster: String,
        thread: Option<String>,
        alarm: Option<String>,
    },
}

fn compact(t: Option<DateTime<Utc>>) -> String {
    t.unwrap_or_else(Utc::now)
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

fn requests_from_alarm(alarm: &AlarmChange) -> Result<Vec<Request>, String> {
    if alarm.clusters.is_empty() {
        return Err(format!(
            "alarm {} names no cluster (metric dimension ClusterName)",
            alarm.alarm_name
        ));
    }
    let requests = alarm.clusters.iter().map(|cluster| {
        match alarm.state.as_str() {
            // The thread is the alarm's ALARM period: its start time is the ALARM's own time and,
            // in the OK event, the previous state's time.
            "ALARM" => Some(Request::Fix {
                cluster: cluster.clone(),
                thread: Some(format!(
                    "{cluster}/{KIND}/{}/{}",
                    alarm.alarm_name,
                    compact(alarm.state_time)
                )),
                alarm: Some(alarm.alarm_name.clone()),
            }),
            "OK" if alarm.previous_state == "ALARM" => Some(Request::Verify {
                cluster: cluster.clone(),
                thread: Some(format!(
                    "{cluster}/{KIND}/{}/{}",
                    alarm.alarm_name,
                    compact(alarm.previous_state_time)
                )),
                alarm: Some(alarm.alarm_name.clone()),
            }),
            _ => None,
        }
    });
    let requests: Vec<Request> = requests.flatten().collect();
    if requests.is_empty() {
        return Err(format!(
            "alarm {} went from {} to {}: nothing to do",
            alarm.alarm_name, alarm.previous_state, alarm.state
        ));
    }
    Ok(requests)
}

fn requests_from(event: &Value) -> Result<Vec<Request>, EventError> {
    if is_alarm(event) {
        let alarm = parse_alarm(event)?;
        return requests_from_alarm(&alarm).map_err(|reason| EventError::Invalid {
            kind: "pending-pods alarm",
            reason,
        });
    }
    if let Some(cluster) = event
        .get("cluster")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        let verify = event
            .get("verify")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Ok(vec![if verify {
            Request::Verify {
                cluster: cluster.into(),
                thread: None,
                alarm: None,
            }
        } else {
            Request::Fix {
                cluster: cluster.into(),
                thread: None,
                alarm: None,
            }
        }]);
    }
    Err(EventError::Malformed(
        "expected a CloudWatch Alarm State Change or {\"cluster\": NAME[, \"verify\": true]}"
            .into(),
    ))
}

/// The pending-pods handler with its clients, built once per cold start.
pub struct PendingPods {
    pub aws: AwsClients,
    pub iam: aws_sdk_iam::Client,
    pub access: ClusterAccess,
    pub config: Config,
    pub notifier: Notifier,
}

impl Function for PendingPods {
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

    /// Handles one Lambda payload (an alarm event, possibly in SQS/SNS, or a direct request).
    async fn handle(
        &self,
        payload: &Value,
        invocation_deadline: Option<Instant>,
    ) -> Result<InvocationResult, HandlerError> {
        let until = invocation_deadline.unwrap_or_else(|| Instant::now() + self.config.max_drain);
        dispatch(
            payload,
            Some("cluster"),
            |event| async move { requests_from(&event) },
            |request| async move { self.handle_request(&request, until).await.map(|r| vec![r]) },
        )
        .await
    }
}

impl PendingPods {
    async fn handle_request(
        &self,
        request: &Request,
        until: Instant,
    ) -> Result<Report, HandlerError> {
        let (cluster, verify, thread, alarm) = match request {
            Request::Fix {
                cluster,
                thread,
                alarm,
            } => (cluster, false, thread, alarm),
            Request::Verify {
                cluster,
                thread,
                alarm,
            } => (cluster, true, thread, alarm),
        };
        let mut report = Report {
            kind: KIND.into(),
            cluster: Some(cluster.clone()),
            dry_run: self.config.dry_run,
            event_id: alarm.clone().unwrap_or_default(),
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
        let incident = read_incident(&client, until)
            .await
            .map_err(kube_err("read the pending-pods incident"))?;
        report.incident_id = incident
            .as_ref()
            .map(|i| i.id.clone())
            .or_else(|| thread.clone())
            .unwrap_or_else(|| format!("{cluster}/{KIND}/{}", compact(None)));

        let gathered = facts::gather(
            &self.aws.ec2,
            &self.aws.eks,
            &client,
            cluster,
            cluster_facts.role_arn.clone(),
            until,
        )
        .await?;
        let settings = Settings {
            allow_node_replacement: self.config.allow_node_replacement,
            allow_pod_eni: self.config.allow_pod_eni,
        };
        let decision = decide(&gathered, settings);
        describe_facts(&gathered, &decision, &mut report);

        if verify {
            return self
                .verify(report, &client, incident, &decision, until)
                .await;
        }

        // Steps already applied in this incident are not repeated (prefix delegation shows in
        // the CNI's configuration anyway; node replacement does not).
        let done: Vec<String> = incident
            .as_ref()
            .map(|i| i.actions.clone())
            .unwrap_or_default();
        let (repeat, todo): (Vec<_>, Vec<_>) = decision
            .steps
            .iter()
            .cloned()
            .partition(|(s, _)| done.iter().any(|d| d == s.name()));
        tracing::info!(cluster = %cluster, incident = %report.incident_id, pending = gathered.pending.len(),
            actions = ?todo.iter().map(|(s, _)| s.name()).collect::<Vec<_>>(), dry_run = self.config.dry_run, "decision");

        if todo.is_empty() {
            let (outcome, summary) = if incident.is_some()
                && (!repeat.is_empty() || decision.ip_related > 0)
            {
                (
                    Outcome::Skipped,
                    format!(
                        "The fix of incident {} is rolling out: {} IP-related pods still Pending; nothing new to do.",
                        report.incident_id, decision.ip_related
                    ),
                )
            } else if decision.ip_related > 0 {
                (
                    Outcome::NeedsAttention,
                    format!(
                        "{} pods Pending on IP limits in {cluster}; eks-remedy cannot fix this: {}",
                        decision.ip_related,
                        decision.blockers.join("; ")
                    ),
                )
            } else if gathered.pending.is_empty() {
                (Outcome::Resolved, format!("No Pending pods in {cluster}."))
            } else {
                (
                    Outcome::Skipped,
                    format!(
                        "{} Pending pods in {cluster}, none for an IP reason: left alone.",
                        gathered.pending.len()
                    ),
                )
            };
            let publish = !(incident.is_some() && outcome == Outcome::Skipped && alarm.is_none());
            return Ok(self.done(report, outcome, summary, publish).await);
        }

        let record = |actions: Vec<String>| PendingIncident {
            id: report.incident_id.clone(),
            opened_at: incident
                .as_ref()
                .map(|i| i.opened_at)
                .unwrap_or_else(Utc::now),
            pending_before: incident
                .as_ref()
                .map(|i| i.pending_before)
                .unwrap_or(decision.ip_related),
            actions,
        };

        // Claim the steps before applying them: of two invocations that read the same
        // incident (a repeated alarm during the rollout), only the first applies them.
        if !self.config.dry_run {
            let mut claimed = done.clone();
            claimed.extend(todo.iter().map(|(s, _)| s.name().to_owned()));
            let won = claim_incident(&client, incident.as_ref(), &record(claimed), until)
                .await
                .map_err(kube_err("claim the pending-pods incident"))?;
            if !won {
                let summary = format!(
                    "Another invocation is applying the fix of incident {}; nothing new to do.",
                    report.incident_id
                );
                let publish = alarm.is_some();
                return Ok(self.done(report, Outcome::Skipped, summary, publish).await);
            }
        }

        let mut applied = done.clone();
        let mut failure = None;
        for (step, reason) in todo {
            let result = if self.config.dry_run {
                Ok("dry-run".to_owned())
            } else {
                self.apply(&step, cluster, &client, &gathered.cni, until)
                    .await
            };
            tracing::info!(cluster = %cluster, action = step.name(), outcome = if result.is_ok() { "done" } else { "failed" }, reason = %reason, "action");
            let text = match result {
                Ok(t) => {
                    applied.push(step.name().to_owned());
                    t
                }
                Err(e) => {
                    failure.get_or_insert(format!("{} failed: {e}", step.name()));
                    format!("failed: {e}")
                }
            };
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
        if !self.config.dry_run {
            let record = record(applied);
            if let Err(err) = write_incident(&client, Some(&record), until).await {
                tracing::warn!(error = %err, "could not record the pending-pods incident");
            }
        }
        let (outcome, summary) = match failure {
            Some(f) => (Outcome::Failed, f),
            None => (Outcome::Remediated, summary_of(&decision, cluster)),
        };
        let summary = if self.config.dry_run {
            format!("Dry run, nothing changed. {summary}")
        } else {
            summary
        };
        Ok(self.done(report, outcome, summary, true).await)
    }

    async fn verify(
        &self,
        report: Report,
        client: &Client,
        incident: Option<PendingIncident>,
        decision: &Decision,
        until: Instant,
    ) -> Result<Report, HandlerError> {
        let cluster = report.cluster.clone().unwrap_or_default();
        let before = incident.as_ref().map(|i| i.pending_before);
        let (outcome, summary) = if decision.ip_related == 0 {
            (
                Outcome::Resolved,
                match before {
                    Some(n) => format!("All {n} IP-related Pending pods in {cluster} were placed."),
                    None => format!("No IP-related Pending pods in {cluster}."),
                },
            )
        } else {
            (
                Outcome::NeedsAttention,
                format!(
                    "{} IP-related pods are still Pending in {cluster}{}.",
                    decision.ip_related,
                    before.map(|n| format!(" (were {n})")).unwrap_or_default()
                ),
            )
        };
        if outcome == Outcome::Resolved
            && incident.is_some()
            && !self.config.dry_run
            && let Err(err) = write_incident(client, None, until).await
        {
            tracing::warn!(error = %err, "could not close the pending-pods incident");
        }
        Ok(self.done(report, outcome, summary, true).await)
    }

    async fn apply(
        &self,
        step: &Step,
        cluster: &str,
        client: &Client,
        cni_facts: &cni::CniFacts,
        until: Instant,
    ) -> Result<String, String> {
        match step {
            Step::EnablePrefixDelegation => cni::set_env(
                &self.aws.eks,
                client,
                cluster,
                cni_facts,
                &[("ENABLE_PREFIX_DELEGATION", "true")],
                &[("WARM_PREFIX_TARGET", "1")],
                until,
            )
            .await
            .map_err(|e| e.to_string()),
            Step::EnablePodEni => cni::set_env(
                &self.aws.eks,
                client,
                cluster,
                cni_facts,
                &[("ENABLE_POD_ENI", "true")],
                &[],
                until,
            )
            .await
            .map_err(|e| e.to_string()),
            Step::ReplaceNodes { node_groups } => {
                let mut started = Vec::new();
                for group in node_groups {
                    let out = self
                        .aws
                        .eks
                        .update_nodegroup_version()
                        .cluster_name(cluster)
                        .nodegroup_name(group)
                        .send()
                        .await
                        .map_err(aws_err("UpdateNodegroupVersion", group))
                        .map_err(|e| e.to_string())?;
                    started.push(format!(
                        "{group} (update {})",
                        out.update().and_then(|u| u.id()).unwrap_or("?")
                    ));
                }
                Ok(format!("rolling update started: {}", started.join(", ")))
            }
            Step::AttachVpcResourceController { role_arn } => {
                let role = role_arn.rsplit('/').next().unwrap_or(role_arn);
                let attached = self
                    .iam
                    .list_attached_role_policies()
                    .role_name(role)
                    .send()
                    .await
                    .map_err(aws_err("ListAttachedRolePolicies", role))
                    .map_err(|e| e.to_string())?;
                if attached
                    .attached_policies()
                    .iter()
                    .any(|p| p.policy_arn() == Some(VPC_RESOURCE_CONTROLLER_POLICY))
                {
                    return Ok("unchanged: already attached".into());
                }
                self.iam
                    .attach_role_policy()
                    .role_name(role)
                    .policy_arn(VPC_RESOURCE_CONTROLLER_POLICY)
                    .send()
                    .await
                    .map_err(aws_err("AttachRolePolicy", role))
                    .map_err(|e| e.to_string())?;
                Ok(format!("attached AmazonEKSVPCResourceController to {role}"))
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
        tracing::info!(cluster = report.cluster.as_deref().unwrap_or(""), incident = %report.incident_id, outcome = outcome.name(), reason = %report.summary, "decision");
        if publish && let Err(err) = self.notifier.publish(&report).await {
            tracing::error!(incident = %report.incident_id, error = %err, "publishing the report failed");
        }
        report
    }
}

fn summary_of(decision: &Decision, cluster: &str) -> String {
    let names: Vec<&str> = decision.steps.iter().map(|(s, _)| s.name()).collect();
    match decision.capacity {
        Some(c) => format!(
            "{} pods Pending on IP limits in {cluster}: {}. Pod capacity {} -> {} slots once nodes run with the new limit; Pending {} -> {} projected.",
            decision.ip_related,
            names.join(", "),
            c.before,
            c.after,
            c.pending,
            c.pending_after
        ),
        None => format!(
            "{} pods Pending on IP limits in {cluster}: {}.",
            decision.ip_related,
            names.join(", ")
        ),
    }
}

fn describe_facts(facts: &facts::Facts, decision: &Decision, report: &mut Report) {
    let causes: Vec<String> = decision
        .by_cause
        .iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    report.facts.push((
        "Pending pods".into(),
        if causes.is_empty() {
            "none".into()
        } else {
            causes.join(", ")
        },
    ));
    let owner = match &facts.cni.owner {
        cni::Owner::ManagedAddon { version, .. } => format!("managed add-on vpc-cni {version}"),
        cni::Owner::SelfManaged => format!(
            "self-managed aws-node DaemonSet {}",
            facts.cni.version.map(|v| v.to_string()).unwrap_or_default()
        ),
    };
    report.facts.push((
        "VPC CNI".into(),
        format!(
            "{owner}, prefix delegation {}",
            if facts.cni.prefix_delegation() {
                "on"
            } else {
                "off"
            }
        ),
    ));
    if let Some(c) = decision.capacity {
        report.facts.push((
            "Pod capacity".into(),
            format!(
                "{} -> {} slots on {} nodes ({} used)",
                c.before, c.after, c.nodes, c.used
            ),
        ));
        report.facts.push((
            "Pending (IP limits)".into(),
            format!("{} -> {} projected", c.pending, c.pending_after),
        ));
    }
    for subnet in &facts.subnets {
        report.facts.push((
            format!("Subnet {}", subnet.id),
            format!("{} free addresses", subnet.available),
        ));
    }
    report
        .notes
        .extend(decision.blockers.iter().map(|b| format!("Cannot fix: {b}")));
    report.notes.extend(decision.notes.iter().cloned());
    report
        .next_steps
        .extend(decision.next_steps.iter().cloned());
}

async fn read_incident(
    client: &Client,
    deadline: Instant,
) -> Result<Option<PendingIncident>, kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    match retrying(deadline, || api.get(cni::DAEMON_SET)).await {
        Ok(ds) => Ok(ds
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .and_then(|t| serde_json::from_str(t).ok())),
        Err(err) if status_code(&err) == Some(404) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Replaces the incident with `claimed` if it is still `expected` (what this invocation read);
/// returns false when another invocation changed it first. Without an `aws-node` DaemonSet
/// there is nowhere to keep the record, and the claim is granted.
async fn claim_incident(
    client: &Client,
    expected: Option<&PendingIncident>,
    claimed: &PendingIncident,
    deadline: Instant,
) -> Result<bool, kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    loop {
        let ds = match retrying(deadline, || api.get(cni::DAEMON_SET)).await {
            Ok(ds) => ds,
            Err(err) if status_code(&err) == Some(404) => return Ok(true),
            Err(err) => return Err(err),
        };
        let current: Option<PendingIncident> = ds
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .and_then(|t| serde_json::from_str(t).ok());
        if current.as_ref() == Some(claimed) {
            // This invocation's own claim, whose answer was lost.
            return Ok(true);
        }
        if current.as_ref() != expected {
            return Ok(false);
        }
        let rv = ds.metadata.resource_version.clone().unwrap_or_default();
        let path = format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"));
        let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
        if ds.metadata.annotations.is_none() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
        }
        let text = serde_json::to_string(claimed).map_err(kube::Error::SerdeError)?;
        ops.push(json!({"op": "add", "path": path, "value": text}));
        match crate::nodes::patch_json(&api, cni::DAEMON_SET, ops, deadline).await {
            Ok(()) => return Ok(true),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Writes (or, with `None`, removes) the incident, guarded by the resourceVersion read.
async fn write_incident(
    client: &Client,
    incident: Option<&PendingIncident>,
    deadline: Instant,
) -> Result<(), kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    loop {
        let ds = retrying(deadline, || api.get(cni::DAEMON_SET)).await?;
        let rv = ds.metadata.resource_version.clone().unwrap_or_default();
        let path = format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"));
        let has = ds
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION));
        let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
        match incident {
            Some(record) => {
                if ds.metadata.annotations.is_none() {
                    ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
                }
                let text = serde_json::to_string(record).map_err(kube::Error::SerdeError)?;
                ops.push(json!({"op": "add", "path": path, "value": text}));
            }
            None if has => ops.push(json!({"op": "remove", "path": path})),
            None => return Ok(()),
        }
        match crate::nodes::patch_json(&api, cni::DAEMON_SET, ops, deadline).await {
            Ok(()) => return Ok(()),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_and_ok_share_one_thread() {
        let event: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/events/cloudwatch-alarm-pending-pods.json"
        ))
        .unwrap();
        let fire = requests_from(&event).unwrap();
        let mut ok = event.clone();
        ok["detail"]["previousState"] = ok["detail"]["state"].clone();
        ok["detail"]["state"] = json!({"value": "OK", "timestamp": "2026-12-04T09:40:00.000+0000"});
        let resolve = requests_from(&ok).unwrap();
        let thread = |r: &Request| match r {
            Request::Fix { thread, .. } | Request::Verify { thread, .. } => thread.clone(),
        };
        assert!(matches!(fire[0], Request::Fix { .. }));
        assert!(matches!(resolve[0], Request::Verify { .. }));
        assert_eq!(thread(&fire[0]), thread(&resolve[0]));
    }

    #[test]
    fn direct_requests_and_bad_input() {
        assert!(matches!(
            requests_from(&json!({"cluster": "c", "verify": true})).unwrap()[0],
            Request::Verify { .. }
        ));
        assert!(requests_from(&json!({"nothing": 1})).is_err());
    }
}
