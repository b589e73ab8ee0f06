//! The node-interruption function: from an EC2 interruption event to a cordoned, drained node,
//! a completed lifecycle hook and a report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use serde_json::Value;
use tokio::time::Instant;

use crate::access::ClusterAccess;
use crate::aws::{AwsClients, ClusterFacts, describe_instance};
use crate::config::Config;
use crate::drain::{self, DrainOptions, DrainReport};
use crate::events::{InstanceState, Notice, NoticeKind, parse_event};
use crate::incident::{self, Claim, Level};
use crate::lifecycle::{self, Completion};
use crate::nodes;
use crate::plan::{self, Action, Plan};
use crate::report::{Notifier, Outcome, Report, Stage, StepResult};

use crate::invocation::{Function, admit_cluster, dispatch, kube_err};
pub use crate::invocation::{HandlerError, InvocationResult};

/// Kept free at the end of an invocation to report and answer.
const INVOCATION_MARGIN: Duration = Duration::from_secs(5);

/// The node-interruption handler with its clients, built once per cold start.
pub struct NodeInterruption {
    pub aws: AwsClients,
    pub access: ClusterAccess,
    pub config: Config,
    pub notifier: Notifier,
}

/// Facts gathered about the notice's instance and cluster.
struct Target {
    cluster: ClusterFacts,
}

impl Function for NodeInterruption {
    fn new(aws: AwsClients, access: ClusterAccess, config: Config) -> Self {
        let notifier = Notifier::new(aws.sns.clone(), config.topic_arn.clone());
        Self {
            aws,
            access,
            config,
            notifier,
        }
    }

    /// Handles one Lambda payload. `invocation_deadline` is when Lambda stops the invocation.
    /// Returns an error only when the whole payload is worth a retry; per-message failures of
    /// an SQS batch are listed in `batchItemFailures` instead.
    async fn handle(
        &self,
        payload: &Value,
        invocation_deadline: Option<Instant>,
    ) -> Result<InvocationResult, HandlerError> {
        let until = invocation_deadline
            .map(|d| d.checked_sub(INVOCATION_MARGIN).unwrap_or(d))
            .unwrap_or_else(|| Instant::now() + self.config.max_drain + Duration::from_secs(60));
        dispatch(
            payload,
            None,
            |event| async move { parse_event(&event) },
            |notice: Notice| async move {
                self.handle_notice(&notice, until).await.inspect_err(|err| {
                    tracing::error!(instance_id = %notice.instance_id, kind = notice.kind.name(), error = %err, "notice failed");
                })
            },
        )
        .await
    }
}

impl NodeInterruption {
    async fn handle_notice(
        &self,
        notice: &Notice,
        until: Instant,
    ) -> Result<Vec<Report>, HandlerError> {
        let mut report = Report {
            incident_id: format!("{}/{}", notice.instance_id, notice.event_id),
            kind: notice.kind.name().to_owned(),
            event_id: notice.event_id.clone(),
            instance_id: notice.instance_id.clone(),
            dry_run: self.config.dry_run,
            deadline: notice.deadline,
            ..Report::default()
        };

        let target = match self.find_target(notice, &mut report).await? {
            Ok(target) => target,
            Err((outcome, why, publish)) => {
                return Ok(vec![self.finish(report, outcome, why, publish).await]);
            }
        };
        let cluster = target.cluster.name.clone();

        let level = match plan::target_level(notice, &self.config) {
            Ok(level) => level,
            Err(why)
                if notice.kind
                    == (NoticeKind::StateChange {
                        state: InstanceState::Running,
                    }) =>
            {
                return self
                    .recover(notice, &target.cluster, until, report, why)
                    .await;
            }
            Err(why) => {
                return Ok(vec![
                    self.finish(report, Outcome::Ignored, why, false).await,
                ]);
            }
        };

        let deadline_at = self.drain_deadline(notice, until).await?;
        let needed = deadline_at.saturating_duration_since(Instant::now()) + INVOCATION_MARGIN;
        let client = self.access.client(&target.cluster, needed).await?;
        let nodes_api: Api<Node> = Api::all(client.clone());

        let node = match nodes::find_by_instance(&nodes_api, &notice.instance_id, until).await {
            Ok(node) => node,
            Err(err) => return Err(self.kube_failure(&cluster, "list nodes", err)),
        };
        let Some(node) = node else {
            let mut reports = Vec::new();
            let mut r = report.clone();
            if notice.lifecycle_action.is_some() {
                r.steps.push(self.complete_hook(notice).await?);
            }
            reports.push(
                self.finish(
                    r,
                    Outcome::Skipped,
                    format!(
                        "instance {} is not a cluster node of {cluster}",
                        notice.instance_id
                    ),
                    // Every scale-in sends state changes after the node is gone: only a
                    // completed lifecycle action is worth a message.
                    notice.lifecycle_action.is_some(),
                )
                .await,
            );
            return Ok(reports);
        };
        let node_name = node.metadata.name.clone().unwrap_or_default();
        report.node = Some(node_name.clone());

        let claim = if self.config.dry_run {
            incident::evaluate(
                incident::read(&node, &notice.instance_id),
                &cluster,
                notice,
                level,
            )
        } else {
            incident::claim(&nodes_api, &node_name, &cluster, notice, level, until)
                .await
                .map_err(|e| self.kube_failure(&cluster, "claim incident", e))?
        };
        report.incident_id = claim.incident().id.clone();
        let deadline_utc = instant_to_utc(deadline_at);
        let plan = plan::decide(notice, level, &claim, deadline_utc);
        tracing::info!(
            cluster = %cluster, node = %node_name, instance_id = %notice.instance_id,
            kind = notice.kind.name(), incident = %report.incident_id,
            actions = ?plan.steps.iter().map(|s| s.action.name()).collect::<Vec<_>>(),
            reason = plan.no_action.as_deref().unwrap_or(""),
            dry_run = self.config.dry_run, "decision"
        );

        if plan.steps.is_empty() {
            // A repeat or an incident that already went this far: one thread, no new message.
            let why = plan.no_action.clone().unwrap_or_default();
            report.outcome = Some(Outcome::Skipped);
            report.summary = why;
            tracing::info!(incident = %report.incident_id, outcome = "skipped", "no new action");
            return Ok(vec![report]);
        }

        self.execute(
            notice,
            &client,
            &node_name,
            &claim,
            plan,
            deadline_at,
            report,
        )
        .await
    }

    /// The instance runs again (a stopped instance was started, a rebalance passed): undo what
    /// eks-remedy did to its node, so it takes pods again, and close the incident.
    async fn recover(
        &self,
        notice: &Notice,
        cluster: &ClusterFacts,
        until: Instant,
        mut report: Report,
        why: String,
    ) -> Result<Vec<Report>, HandlerError> {
        let client = self
            .access
            .client(cluster, until.saturating_duration_since(Instant::now()))
            .await?;
        let nodes_api: Api<Node> = Api::all(client);
        let node = nodes::find_by_instance(&nodes_api, &notice.instance_id, until)
            .await
            .map_err(|e| self.kube_failure(&cluster.name, "list nodes", e))?;
        let Some(incident) = node
            .as_ref()
            .and_then(|n| incident::read(n, &notice.instance_id))
        else {
            return Ok(vec![
                self.finish(report, Outcome::Ignored, why, false).await,
            ]);
        };
        let name = node.and_then(|n| n.metadata.name).unwrap_or_default();
        report.node = Some(name.clone());
        report.incident_id = incident.id.clone();
        if !self.config.dry_run {
            let undo = async {
                nodes::uncordon(&nodes_api, &name, until).await?;
                nodes::remove_taint(&nodes_api, &name, nodes::INTERRUPTION_TAINT_KEY, until)
                    .await?;
                incident::close(&nodes_api, &name, &notice.instance_id, until).await
            };
            undo.await
                .map_err(|e| self.kube_failure(&cluster.name, "undo the interruption", e))?;
        }
        let summary = format!(
            "Instance {} is running again: {name} uncordoned, its interruption taint removed, incident closed.",
            notice.instance_id
        );
        let summary = if self.config.dry_run {
            format!("Dry run, nothing changed. {summary}")
        } else {
            summary
        };
        Ok(vec![
            self.finish(report, Outcome::Resolved, summary, true).await,
        ])
    }

    /// Instance and cluster facts; `Err` carries the outcome when there is nothing to do.
    async fn find_target(
        &self,
        notice: &Notice,
        report: &mut Report,
    ) -> Result<Result<Target, (Outcome, String, bool)>, HandlerError> {
        let Some(instance) = describe_instance(&self.aws.ec2, &notice.instance_id).await? else {
            return Ok(Err((
                Outcome::Ignored,
                format!(
                    "instance {} is unknown to EC2 in {}",
                    notice.instance_id,
                    self.aws.region()
                ),
                false,
            )));
        };
        report.instance_type = Some(instance.instance_type.clone()).filter(|s| !s.is_empty());
        report.zone = Some(instance.zone.clone()).filter(|s| !s.is_empty());
        report.node_group = instance.node_group();
        let Some(cluster) = instance.cluster() else {
            return Ok(Err((
                Outcome::Ignored,
                format!("instance {} carries no EKS cluster tag", notice.instance_id),
                false,
            )));
        };
        report.cluster = Some(cluster.clone());
        let cluster = match admit_cluster(&self.aws, &self.access, &self.config, &cluster).await? {
            Ok(facts) => facts,
            Err(why) => return Ok(Err((Outcome::Ignored, why, false))),
        };
        Ok(Ok(Target { cluster }))
    }

    /// When the drain must be over: the notice's deadline (for a lifecycle hook, the hook's
    /// timeout, which heartbeats extend), capped by the longest drain and by the invocation.
    async fn drain_deadline(
        &self,
        notice: &Notice,
        until: Instant,
    ) -> Result<Instant, HandlerError> {
        let now = Instant::now();
        let mut deadline = (now + self.config.max_drain).min(until);
        if let Some(at) = notice.deadline
            && !matches!(notice.kind, NoticeKind::LifecycleTerminate)
        {
            deadline = deadline.min(utc_to_instant(at));
        }
        Ok(deadline)
    }

    fn kube_failure(
        &self,
        cluster: &str,
        operation: &'static str,
        err: kube::Error,
    ) -> HandlerError {
        if nodes::status_code(&err) == Some(401) {
            // The token was refused (expired or rotated role): sign a new one on the retry.
            self.access.forget_token(cluster);
        }
        kube_err(operation)(err)
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        notice: &Notice,
        client: &Client,
        node: &str,
        claim: &Claim,
        plan: Plan,
        deadline: Instant,
        mut report: Report,
    ) -> Result<Vec<Report>, HandlerError> {
        let nodes_api: Api<Node> = Api::all(client.clone());
        let cluster = report.cluster.clone().unwrap_or_default();
        let dry_run = self.config.dry_run;
        let mut reports = Vec::new();
        let op_deadline = deadline.max(Instant::now() + Duration::from_secs(10));

        let drain_step = plan.steps.iter().find_map(|s| match s.action {
            Action::Drain { .. } => Some(()),
            _ => None,
        });
        let mut pods = None;
        if drain_step.is_some() {
            let found = drain::pods_on_node(client, node, op_deadline)
                .await
                .map_err(|e| self.kube_failure(&cluster, "list pods", e))?;
            report.pods_to_move = found
                .to_evict
                .iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default()
                    )
                })
                .collect();
            report.deadline = Some(instant_to_utc(deadline));
            pods = Some(found);
        }

        // The start report opens the thread before the slow part.
        if matches!(claim, Claim::Opened(_) | Claim::Escalated { .. }) && drain_step.is_some() {
            let mut start = report.clone();
            start.stage = Some(Stage::Start);
            start.outcome = Some(Outcome::Started);
            start.summary = format!(
                "{} for {}: draining {} pods before {}.",
                notice.kind.describe(),
                node,
                start.pods_to_move.len(),
                instant_to_utc(deadline).format("%H:%M:%S UTC")
            );
            self.publish(&start).await;
            reports.push(start);
        }

        let mut drained: Option<DrainReport> = None;
        let mut failure: Option<String> = None;
        // A lifecycle action that could not be completed is reported with the drain, then
        // returned so Lambda retries the event (the retry only completes the action).
        let mut retry: Option<HandlerError> = None;
        let mut raced = false;
        for step in plan.steps {
            let result = if dry_run {
                Ok("dry-run".to_owned())
            } else {
                match &step.action {
                    Action::Cordon => nodes::cordon(&nodes_api, node, op_deadline)
                        .await
                        .map(changed)
                        .map_err(|e| e.to_string()),
                    Action::TaintInterruption => nodes::add_taint(
                        &nodes_api,
                        node,
                        &nodes::interruption_taint(notice.kind.name()),
                        op_deadline,
                    )
                    .await
                    .map(changed)
                    .map_err(|e| e.to_string()),
                    Action::TaintOutOfService => nodes::add_taint(
                        &nodes_api,
                        node,
                        &nodes::out_of_service_taint(),
                        op_deadline,
                    )
                    .await
                    .map(changed)
                    .map_err(|e| e.to_string()),
                    Action::Drain { .. } => {
                        let r = self
                            .run_drain(
                                notice,
                                client,
                                node,
                                pods.take().unwrap_or_default(),
                                deadline,
                            )
                            .await;
                        match r {
                            Ok(r) => {
                                raced = r.stopped;
                                let text =
                                    if r.complete() { "done" } else { "incomplete" }.to_owned();
                                drained = Some(r);
                                Ok(text)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Action::AwaitDrain => {
                        self.await_drain(&nodes_api, node, &notice.instance_id, deadline)
                            .await
                    }
                    Action::CompleteLifecycleAction => match self.complete_hook(notice).await {
                        Ok(r) => {
                            report.steps.push(r);
                            continue;
                        }
                        Err(err) => {
                            let text = format!("{err}; the event will be retried");
                            retry = Some(err);
                            Err(text)
                        }
                    },
                    // The interruption plan never holds another function's remediation.
                    Action::Remediation { name } => {
                        Err(format!("{name} is not an interruption action"))
                    }
                }
            };
            tracing::info!(cluster = %cluster, node, instance_id = %notice.instance_id, action = step.action.name(),
                outcome = match &result { Ok(r) => r.as_str(), Err(_) => "failed" }, reason = %step.reason, "action");
            let text = match result {
                Ok(text) => text,
                Err(e) => {
                    failure.get_or_insert(format!("{} failed: {e}", step.action.name()));
                    format!("failed: {e}")
                }
            };
            report.steps.push(StepResult { step, result: text });
        }

        if let Some(d) = &drained {
            report.evicted = d.evicted.iter().map(ToString::to_string).collect();
            report.deleted = d.deleted.iter().map(ToString::to_string).collect();
            report.blocked = d.blocked.clone();
            if !d.empty_dir.is_empty() {
                report.notes.push(format!(
                    "{} evicted pods used emptyDir volumes; their data is gone: {}",
                    d.empty_dir.len(),
                    d.empty_dir
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !d.skipped.is_empty() {
                report.notes.push(format!(
                    "{} pods left in place (DaemonSet, mirror or finished)",
                    d.skipped.len()
                ));
            }
            for pod in &d.still_terminating {
                report
                    .notes
                    .push(format!("{pod} was still terminating at the deadline"));
            }
            if d.lifecycle_heartbeats > 0 {
                report.notes.push(format!(
                    "{} lifecycle heartbeats kept the instance waiting for the drain",
                    d.lifecycle_heartbeats
                ));
            }
            if !d.volume_attachments_left.is_empty() {
                report.notes.push(format!(
                    "VolumeAttachments still on the node: {}",
                    d.volume_attachments_left.join(", ")
                ));
            }
            let outcome = if raced {
                "termination-raced"
            } else if d.complete() {
                "drained"
            } else {
                "partially-drained"
            };
            if let Err(err) = incident::record_drain_outcome(
                &nodes_api,
                node,
                &notice.instance_id,
                outcome,
                op_deadline,
            )
            .await
            {
                tracing::warn!(node, error = %err, "could not record the drain outcome on the incident");
            }
        }

        let (outcome, summary) = if let Some(f) = failure {
            (Outcome::Failed, f)
        } else if raced {
            (
                Outcome::TerminationRaced,
                format!(
                    "The instance went away while {node} was draining; the out-of-service taint releases what is left."
                ),
            )
        } else if let Some(d) = &drained {
            if d.complete() {
                (
                    Outcome::Drained,
                    format!(
                        "{node} drained: {} pods evicted, {} deleted at the deadline.",
                        d.evicted.len(),
                        d.deleted.len()
                    ),
                )
            } else {
                (
                    Outcome::PartiallyDrained,
                    format!(
                        "{node} partially drained: {} pods could not be moved, {} still terminating.",
                        d.blocked.len(),
                        d.still_terminating.len()
                    ),
                )
            }
        } else if report
            .steps
            .iter()
            .any(|s| s.step.action == Action::TaintOutOfService)
        {
            (
                Outcome::OutOfService,
                format!(
                    "Instance {} is gone: {node} tainted out-of-service so its pods and volumes are released.",
                    notice.instance_id
                ),
            )
        } else if report.steps.iter().any(|s| s.step.action == Action::Cordon) {
            (
                Outcome::Cordoned,
                format!("{node} cordoned after a {}.", notice.kind.describe()),
            )
        } else {
            (
                Outcome::Skipped,
                format!("Nothing new to do on {node}; lifecycle action handled."),
            )
        };
        report.next_steps = next_steps(outcome, &report);
        report.stage = Some(Stage::End);
        report.outcome = Some(outcome);
        report.summary = if dry_run {
            format!("Dry run, nothing changed. {summary}")
        } else {
            summary
        };
        self.publish(&report).await;
        if let Some(err) = retry {
            return Err(err);
        }
        reports.push(report);
        Ok(reports)
    }

    async fn run_drain(
        &self,
        notice: &Notice,
        client: &Client,
        node: &str,
        pods: drain::PodsOnNode,
        deadline: Instant,
    ) -> Result<DrainReport, kube::Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let nodes_api: Api<Node> = Api::all(client.clone());

        // Another invocation may learn that the instance is gone: stop waiting then.
        let watcher = {
            let stop = stop.clone();
            let nodes_api = nodes_api.clone();
            let node = node.to_owned();
            let instance = notice.instance_id.clone();
            let poll = self.config.poll_interval;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(poll).await;
                    match incident::current(&nodes_api, &node, &instance, deadline).await {
                        Ok(Some(i)) if i.level == Level::OutOfService => {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                        Ok(None) => {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                        _ => {}
                    }
                }
            })
        };
        let beats = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let heartbeats = self.start_heartbeats(notice, deadline, beats.clone()).await;

        let options = DrainOptions {
            deadline,
            policy: self.config.deadline_policy,
            concurrency: self.config.eviction_concurrency,
            poll_interval: self.config.poll_interval,
            volume_detach_wait: self.config.volume_detach_wait,
        };
        let result = drain::drain(client, node, pods, &options, stop).await;
        watcher.abort();
        if let Some(h) = heartbeats {
            h.abort();
        }
        result.map(|mut r| {
            r.lifecycle_heartbeats = beats.load(Ordering::Relaxed);
            r
        })
    }

    /// For a lifecycle hook whose timeout ends before the drain deadline, records heartbeats
    /// in the background so Auto Scaling keeps the instance until the drain is over.
    async fn start_heartbeats(
        &self,
        notice: &Notice,
        deadline: Instant,
        beats: Arc<std::sync::atomic::AtomicU32>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let action = notice.lifecycle_action.clone()?;
        let timeout = match lifecycle::heartbeat_timeout(&self.aws.autoscaling, &action).await {
            Ok(t) => t,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the lifecycle hook; assuming the default timeout");
                lifecycle::DEFAULT_HEARTBEAT_TIMEOUT
            }
        };
        let expires = utc_to_instant(notice.time) + timeout;
        if expires >= deadline {
            return None;
        }
        let client = self.aws.autoscaling.clone();
        let instance = notice.instance_id.clone();
        Some(tokio::spawn(async move {
            let mut expires = expires;
            let lead = (timeout / 2).min(Duration::from_secs(30));
            while expires < deadline {
                tokio::time::sleep_until(expires.checked_sub(lead).unwrap_or(expires)).await;
                match lifecycle::heartbeat(&client, &action, &instance).await {
                    Ok(()) => {
                        beats.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(instance_id = %instance, action = "lifecycle-heartbeat", outcome = "done");
                        expires = Instant::now() + timeout;
                    }
                    Err(err) => {
                        tracing::warn!(instance_id = %instance, error = %err, "lifecycle heartbeat failed");
                        return;
                    }
                }
            }
        }))
    }

    async fn await_drain(
        &self,
        nodes_api: &Api<Node>,
        node: &str,
        instance: &str,
        deadline: Instant,
    ) -> Result<String, String> {
        loop {
            match incident::current(nodes_api, node, instance, deadline).await {
                Ok(Some(i)) if i.drain_outcome.is_some() => {
                    return Ok(format!(
                        "drain finished: {}",
                        i.drain_outcome.unwrap_or_default()
                    ));
                }
                Ok(None) => return Ok("node gone".into()),
                // The instance is gone: no drain to wait for (none may have started).
                Ok(Some(i)) if i.level == Level::OutOfService => {
                    return Ok("the instance is gone".into());
                }
                Ok(Some(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() + self.config.poll_interval >= deadline {
                return Ok("deadline reached while the other drain runs".into());
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn complete_hook(&self, notice: &Notice) -> Result<StepResult, HandlerError> {
        let Some(action) = &notice.lifecycle_action else {
            let step = plan::Step {
                action: Action::CompleteLifecycleAction,
                reason: "the notice carries no lifecycle action".into(),
            };
            return Ok(StepResult {
                step,
                result: "skipped".into(),
            });
        };
        let step = plan::Step {
            action: Action::CompleteLifecycleAction,
            reason: format!(
                "Auto Scaling group {} waits on hook {}",
                action.auto_scaling_group, action.hook
            ),
        };
        if self.config.dry_run {
            return Ok(StepResult {
                step,
                result: "dry-run".into(),
            });
        }
        let result =
            match lifecycle::complete(&self.aws.autoscaling, action, &notice.instance_id).await? {
                Completion::Completed => "done",
                Completion::AlreadyComplete => "already complete",
            };
        tracing::info!(instance_id = %notice.instance_id, action = "complete-lifecycle-action", outcome = result, "action");
        Ok(StepResult {
            step,
            result: result.into(),
        })
    }

    async fn finish(
        &self,
        mut report: Report,
        outcome: Outcome,
        why: String,
        publish: bool,
    ) -> Report {
        report.outcome = Some(outcome);
        report.stage = Some(Stage::End);
        report.summary = why;
        tracing::info!(instance_id = %report.instance_id, kind = %report.kind, outcome = outcome.name(), reason = %report.summary, "decision");
        if publish {
            self.publish(&report).await;
        }
        report
    }

    async fn publish(&self, report: &Report) {
        // Limitation: a report that SNS refuses is logged, not retried: the actions it
        // describes are done, and a retry of the whole event would only find a repeat.
        if let Err(err) = self.notifier.publish(report).await {
            tracing::error!(incident = %report.incident_id, error = %err, "publishing the report failed");
        }
    }
}

fn changed(c: bool) -> String {
    if c { "done" } else { "unchanged" }.into()
}

fn next_steps(outcome: Outcome, report: &Report) -> Vec<String> {
    match outcome {
        Outcome::PartiallyDrained => {
            let mut steps: Vec<String> = report
                .blocked
                .iter()
                .filter_map(|b| b.pdb.as_ref().map(|p| format!("Check PodDisruptionBudget {p} in namespace {}: it allows no disruption now.", b.pod.namespace)))
                .collect();
            steps.dedup();
            steps.push("Pods left on the node die with the instance; check their replacements are scheduled.".into());
            steps
        }
        Outcome::TerminationRaced | Outcome::OutOfService => vec![
            "Confirm replacement pods are running and their volumes attached elsewhere.".into(),
            "The node object is removed by the cloud controller; the out-of-service taint goes with it.".into(),
        ],
        Outcome::Cordoned => vec!["Watch for a spot interruption warning; uncordon the node if the instance stays.".into()],
        Outcome::Failed => vec!["Look at the function's logs for this incident; the event will be retried.".into()],
        _ => Vec::new(),
    }
}

fn utc_to_instant(at: DateTime<Utc>) -> Instant {
    let now_utc = Utc::now();
    let now = Instant::now();
    match (at - now_utc).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now
            .checked_sub((now_utc - at).to_std().unwrap_or_default())
            .unwrap_or(now),
    }
}

fn instant_to_utc(at: Instant) -> DateTime<Utc> {
    let now = Instant::now();
    let delta = chrono::TimeDelta::from_std(at.saturating_duration_since(now)).unwrap_or_default();
    Utc::now() + delta
}
