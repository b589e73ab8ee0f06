//! Draining a node through the eviction API, as fast as PodDisruptionBudgets allow and never
//! past the interruption deadline.
//!
//! Evictions run concurrently up to a bound (instead of a client-side rate limit), 429s from
//! PodDisruptionBudgets and API Priority and Fairness are retried with backoff, and a pod is
//! only deleted directly when the deadline policy allows it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::DeadlinePolicy;
use crate::nodes::{retrying, status_code};

/// The annotation the kubelet puts on static (mirror) pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Kubernetes' default termination grace period.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod the drain could not move.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockedPod {
    pub pod: PodRef,
    /// The PodDisruptionBudget that refused the eviction, when the API server named it.
    pub pdb: Option<String>,
    pub reason: String,
}

/// How the drain went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrainReport {
    /// Pods evicted through the eviction API.
    pub evicted: Vec<PodRef>,
    /// Pods deleted directly because their budget still blocked them at the deadline.
    pub deleted: Vec<PodRef>,
    /// Pods left in place on purpose, with why (DaemonSet, mirror pod, finished).
    pub skipped: Vec<(PodRef, String)>,
    /// Pods that could not be moved before the deadline.
    pub blocked: Vec<BlockedPod>,
    /// Evicted pods that used emptyDir volumes: their data is gone.
    pub empty_dir: Vec<PodRef>,
    /// Evicted pods still terminating when the wait ended.
    pub still_terminating: Vec<PodRef>,
    /// VolumeAttachments still on the node when the wait ended.
    pub volume_attachments_left: Vec<String>,
    /// Set when the drain was stopped before the end (the instance went away).
    pub stopped: bool,
    /// Lifecycle hook heartbeats sent while draining.
    pub lifecycle_heartbeats: u32,
}

impl DrainReport {
    /// Whether every pod that had to move has moved.
    pub fn complete(&self) -> bool {
        self.blocked.is_empty() && self.still_terminating.is_empty() && !self.stopped
    }
}

/// How to drain.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub deadline: Instant,
    pub policy: DeadlinePolicy,
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub volume_detach_wait: Duration,
}

/// The pods a drain must move, and those it leaves alone.
#[derive(Debug, Default)]
pub struct PodsOnNode {
    pub to_evict: Vec<Pod>,
    pub skipped: Vec<(PodRef, String)>,
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// Why a pod is not drained, or `None` when it must be evicted.
pub fn skip_reason(pod: &Pod) -> Option<&'static str> {
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)) {
        return Some("mirror pod (static, managed by the kubelet)");
    }
    let owned_by_daemon_set = pod.metadata.owner_references.as_ref().is_some_and(|o| {
        o.iter()
            .any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
    });
    if owned_by_daemon_set {
        return Some("DaemonSet pod");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Some("finished");
    }
    None
}

fn uses_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()))
}

/// The PersistentVolumeClaims a pod mounts, as (namespace, claim name).
fn claims_of(pod: &Pod) -> Vec<(String, String)> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| (namespace.clone(), c.claim_name.clone()))
        .collect()
}

/// The PersistentVolumes bound to the claims of the pods that moved.
async fn volumes_of(
    client: &Client,
    claims: &[(String, String)],
    deadline: Instant,
) -> Result<HashSet<String>, kube::Error> {
    let mut volumes = HashSet::new();
    for (namespace, name) in claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        match retrying(deadline, || api.get(name)).await {
            Ok(claim) => volumes.extend(claim.spec.and_then(|s| s.volume_name)),
            Err(err) if status_code(&err) == Some(404) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(volumes)
}

/// Lists the pods on a node and sorts them into those to evict and those to leave.
pub async fn pods_on_node(
    client: &Client,
    node: &str,
    deadline: Instant,
) -> Result<PodsOnNode, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut result = PodsOnNode::default();
    for pod in list_pods_on_node(&pods, node, deadline).await? {
        match skip_reason(&pod) {
            Some(reason) => result.skipped.push((pod_ref(&pod), reason.to_owned())),
            None => result.to_evict.push(pod),
        }
    }
    Ok(result)
}

async fn list_pods_on_node(
    pods: &Api<Pod>,
    node: &str,
    deadline: Instant,
) -> Result<Vec<Pod>, kube::Error> {
    let mut params = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .limit(500);
    let mut all = Vec::new();
    loop {
        let page = retrying(deadline, || pods.list(&params)).await?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(all),
        }
    }
}

/// The result of moving one pod.
enum Moved {
    Evicted,
    Deleted,
    Gone,
    Blocked(BlockedPod),
}

/// The PodDisruptionBudget named in a 429's causes, e.g. "The disruption budget web-pdb needs
/// 2 healthy pods and has 2 currently".
fn pdb_from(status: &kube::core::Status) -> Option<String> {
    let details = status.details.as_ref()?;
    details.causes.iter().find_map(|cause| {
        let rest = cause.message.strip_prefix("The disruption budget ")?;
        rest.split_whitespace().next().map(str::to_owned)
    })
}

/// Whether a 429 comes from a PodDisruptionBudget (its causes say `DisruptionBudget`) rather
/// than from API Priority and Fairness.
fn refused_by_budget(status: &kube::core::Status) -> bool {
    status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "DisruptionBudget"))
}

fn retry_after(status: &kube::core::Status) -> Option<Duration> {
    let seconds = status.details.as_ref()?.retry_after_seconds;
    (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)))
}

async fn move_pod(client: &Client, pod: &Pod, options: &DrainOptions, stop: &AtomicBool) -> Moved {
    let who = pod_ref(pod);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &who.namespace);
    let uid = pod.metadata.uid.clone();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0) as u64;
    let mut delay = Duration::from_millis(250);
    let mut last_block: Option<BlockedPod> = None;
    // Whether a PodDisruptionBudget refused the last eviction; a throttled one (API Priority
    // and Fairness) is only retried, never deleted by the deadline policy.
    let mut budget_refused = false;

    loop {
        let now = Instant::now();
        if now >= options.deadline || stop.load(Ordering::Relaxed) {
            return Moved::Blocked(last_block.unwrap_or(BlockedPod {
                pod: who.clone(),
                pdb: None,
                reason: "deadline reached before the eviction was accepted".into(),
            }));
        }
        let remaining = (options.deadline - now).as_secs();

        // A budget still blocks and the pod's grace period no longer fits: the policy decides.
        if let Some(block) = &last_block
            && budget_refused
            && remaining <= grace
            && options.policy == DeadlinePolicy::DeleteWithRemainingGrace
        {
            let params = DeleteParams {
                // At least 1: a grace of 0 removes the pod object while its containers run on.
                grace_period_seconds: Some(remaining.max(1) as u32),
                preconditions: uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            tracing::warn!(pod = %who, pdb = ?block.pdb, remaining, "deleting pod past its budget at the deadline");
            match pods.delete(&who.name, &params).await {
                Ok(_) => return Moved::Deleted,
                Err(err) if matches!(status_code(&err), Some(404 | 409)) => return Moved::Gone,
                Err(err) => {
                    last_block = Some(BlockedPod {
                        pod: who.clone(),
                        pdb: block.pdb.clone(),
                        reason: format!("delete failed: {err}"),
                    });
                }
            }
        } else {
            // The grace period is shortened only when it would outlast the deadline.
            let mut delete_options = json!({});
            if remaining < grace {
                delete_options["gracePeriodSeconds"] = json!(remaining.max(1));
            }
            if let Some(uid) = &uid {
                delete_options["preconditions"] = json!({"uid": uid});
            }
            let eviction = json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": who.name, "namespace": who.namespace},
                "deleteOptions": delete_options,
            });
            let result: Result<kube::core::Status, kube::Error> = pods
                .create_subresource("eviction", &who.name, &PostParams::default(), &eviction)
                .await;
            match result {
                Ok(_) => return Moved::Evicted,
                // 404: already gone. 409: the UID precondition failed, so the pod we listed
                // is gone and a new one took its name.
                Err(err) if matches!(status_code(&err), Some(404 | 409)) => return Moved::Gone,
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    budget_refused = refused_by_budget(&status);
                    let pdb = pdb_from(&status);
                    last_block = Some(BlockedPod {
                        pod: who.clone(),
                        reason: match &pdb {
                            Some(name) => {
                                format!("PodDisruptionBudget {name}: {}", cause_text(&status))
                            }
                            None => format!("throttled: {}", status.message),
                        },
                        pdb,
                    });
                    if let Some(after) = retry_after(&status) {
                        delay = after;
                    }
                }
                Err(kube::Error::Api(status))
                    if status.code == 500
                        && status.message.contains("more than one PodDisruptionBudget") =>
                {
                    budget_refused = true;
                    last_block = Some(BlockedPod {
                        pod: who.clone(),
                        pdb: None,
                        reason: "covered by more than one PodDisruptionBudget, which the eviction API does not support".into(),
                    });
                }
                Err(err) if crate::nodes::is_transient(&err) => {
                    tracing::debug!(pod = %who, error = %err, "transient eviction error");
                }
                Err(err) => {
                    return Moved::Blocked(BlockedPod {
                        pod: who.clone(),
                        pdb: None,
                        reason: format!("eviction refused: {err}"),
                    });
                }
            }
        }

        let sleep = delay.min(options.deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(sleep).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn cause_text(status: &kube::core::Status) -> String {
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.first())
        .map(|c| c.message.clone())
        .unwrap_or_else(|| status.message.clone())
}

/// Evicts every pod of `pods.to_evict` concurrently, then waits until they are gone and, when
/// they had persistent volumes, until the node's VolumeAttachments are gone.
pub async fn drain(
    client: &Client,
    node: &str,
    pods: PodsOnNode,
    options: &DrainOptions,
    stop: Arc<AtomicBool>,
) -> Result<DrainReport, kube::Error> {
    let mut report = DrainReport {
        skipped: pods.skipped,
        ..DrainReport::default()
    };
    let claims: Vec<(String, String)> = pods.to_evict.iter().flat_map(claims_of).collect();
    let uids: BTreeMap<PodRef, Option<String>> = pods
        .to_evict
        .iter()
        .map(|p| (pod_ref(p), p.metadata.uid.clone()))
        .collect();
    let empty_dir: HashSet<PodRef> = pods
        .to_evict
        .iter()
        .filter(|p| uses_empty_dir(p))
        .map(pod_ref)
        .collect();

    let results: Vec<(PodRef, Moved)> = futures::stream::iter(pods.to_evict.iter())
        .map(|pod| {
            let stop = stop.clone();
            async move { (pod_ref(pod), move_pod(client, pod, options, &stop).await) }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;

    let mut waiting: BTreeMap<PodRef, Option<String>> = BTreeMap::new();
    for (pod, moved) in results {
        match moved {
            Moved::Evicted => {
                tracing::info!(node, pod = %pod, action = "evict", outcome = "accepted");
                waiting.insert(pod.clone(), uids.get(&pod).cloned().flatten());
                report.evicted.push(pod);
            }
            Moved::Deleted => {
                tracing::info!(node, pod = %pod, action = "delete", outcome = "accepted");
                waiting.insert(pod.clone(), uids.get(&pod).cloned().flatten());
                report.deleted.push(pod);
            }
            Moved::Gone => report.evicted.push(pod),
            Moved::Blocked(blocked) => {
                tracing::info!(node, pod = %pod, action = "evict", outcome = "blocked", reason = %blocked.reason);
                report.blocked.push(blocked);
            }
        }
    }
    report.evicted.sort();
    report.deleted.sort();
    report.blocked.sort_by(|a, b| a.pod.cmp(&b.pod));
    report.empty_dir = report
        .evicted
        .iter()
        .chain(&report.deleted)
        .filter(|p| empty_dir.contains(p))
        .cloned()
        .collect();

    // Evicted pods keep running until their grace period ends; volumes detach only after.
    let all_pods: Api<Pod> = Api::all(client.clone());
    while !waiting.is_empty() {
        if Instant::now() >= options.deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        let present: HashSet<(PodRef, Option<String>)> =
            list_pods_on_node(&all_pods, node, options.deadline)
                .await?
                .iter()
                .map(|p| (pod_ref(p), p.metadata.uid.clone()))
                .collect();
        waiting.retain(|pod, uid| present.contains(&(pod.clone(), uid.clone())));
        if !waiting.is_empty() {
            tokio::time::sleep(options.poll_interval).await;
        }
    }
    report.still_terminating = waiting.into_keys().collect();

    // The replacement pods can attach these volumes only once they are detached here.
    if !claims.is_empty() && report.still_terminating.is_empty() && !stop.load(Ordering::Relaxed) {
        let until = options
            .deadline
            .min(Instant::now() + options.volume_detach_wait);
        let volumes = volumes_of(client, &claims, until).await?;
        report.volume_attachments_left =
            wait_for_volume_detach(client, node, &volumes, until, options.poll_interval, &stop)
                .await?;
    }
    report.stopped = stop.load(Ordering::Relaxed);
    Ok(report)
}

/// The VolumeAttachments that point at `node`. The API server cannot select them by node, so
/// they are filtered here.
pub async fn volume_attachments_on(
    client: &Client,
    node: &str,
    deadline: Instant,
) -> Result<Vec<VolumeAttachment>, kube::Error> {
    let api: Api<VolumeAttachment> = Api::all(client.clone());
    let params = ListParams::default();
    let list = retrying(deadline, || api.list(&params)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|va| va.spec.node_name == node)
        .collect())
}

async fn wait_for_volume_detach(
    client: &Client,
    node: &str,
    volumes: &HashSet<String>,
    until: Instant,
    poll: Duration,
    stop: &AtomicBool,
) -> Result<Vec<String>, kube::Error> {
    loop {
        let left: Vec<String> = volume_attachments_on(client, node, until)
            .await?
            .into_iter()
            .filter(|va| {
                va.spec
                    .source
                    .persistent_volume_name
                    .as_ref()
                    .is_some_and(|pv| volumes.contains(pv))
            })
            .filter_map(|va| va.metadata.name)
            .collect();
        if left.is_empty() || Instant::now() + poll > until || stop.load(Ordering::Relaxed) {
            return Ok(left);
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn daemonset_mirror_and_finished_pods_are_skipped() {
        let ds = pod(json!({"metadata": {"name": "a", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "aws-node", "uid": "u", "controller": true}]}}));
        let mirror = pod(
            json!({"metadata": {"name": "b", "annotations": {"kubernetes.io/config.mirror": "x"}}}),
        );
        let done = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Succeeded"}}));
        let web = pod(json!({"metadata": {"name": "d", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
            "status": {"phase": "Running"}}));
        assert_eq!(skip_reason(&ds), Some("DaemonSet pod"));
        assert!(skip_reason(&mirror).unwrap().starts_with("mirror pod"));
        assert_eq!(skip_reason(&done), Some("finished"));
        assert_eq!(skip_reason(&web), None);
    }

    #[test]
    fn the_blocking_budget_is_read_from_the_causes() {
        let status: kube::core::Status = serde_json::from_value(json!({
            "code": 429, "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget checkout-pdb needs 2 healthy pods and has 2 currently"}],
                "retryAfterSeconds": 10}
        }))
        .unwrap();
        assert_eq!(pdb_from(&status).as_deref(), Some("checkout-pdb"));
        assert!(refused_by_budget(&status));
        assert_eq!(retry_after(&status), Some(Duration::from_secs(10)));

        let throttled: kube::core::Status = serde_json::from_value(json!({
            "code": 429, "reason": "TooManyRequests",
            "message": "Too many requests, please try again later.",
            "details": {"retryAfterSeconds": 1}
        }))
        .unwrap();
        assert!(!refused_by_budget(&throttled), "API Priority and Fairness");
    }
}
