//! The incident record that makes interruption handling idempotent.
//!
//! EventBridge delivers at least once, and one interruption arrives as several events (spot
//! warning, rebalance recommendation, lifecycle hook, state changes). The first invocation to
//! act claims the incident by writing an annotation on the Node with a JSON patch guarded by
//! the resourceVersion it read; an invocation that loses the race re-reads and joins. The
//! record lives as long as the Node and survives cold starts and concurrent invocations.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::events::Notice;
use crate::nodes::{is_conflict, patch_json, retrying};

/// The annotation holding the incident record.
pub const ANNOTATION: &str = "eks-remedy.io/incident";

/// How far an incident has gone; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Cordoned: no new pods.
    Cordon,
    /// Cordoned, tainted and drained.
    Drain,
    /// The instance is gone: out-of-service taint.
    OutOfService,
}

/// The record kept on the Node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    /// Also the notification thread id.
    pub id: String,
    pub instance_id: String,
    pub opened_at: DateTime<Utc>,
    pub level: Level,
    /// Notice kinds seen, with their event ids, so repeats are recognised.
    pub events: Vec<SeenEvent>,
    /// Set when the drain has finished, whatever its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_outcome: Option<String>,
}

/// One event that reached the incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenEvent {
    pub kind: String,
    pub id: String,
    /// A token unique to the invocation that recorded the event, so an invocation whose write
    /// landed but whose answer was lost recognises its own record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

/// What claiming the incident found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No incident yet: this invocation opened it.
    Opened(Incident),
    /// An incident at a lower level: this invocation raised it and does the difference.
    Escalated { incident: Incident, from: Level },
    /// An incident already at this level or above, first event of this kind: nothing to redo,
    /// but kind-specific work (completing a lifecycle hook) still applies.
    Joined(Incident),
    /// This kind of event was already seen for this incident.
    Repeated(Incident),
}

impl Claim {
    pub fn incident(&self) -> &Incident {
        match self {
            Self::Opened(i) | Self::Joined(i) | Self::Repeated(i) => i,
            Self::Escalated { incident, .. } => incident,
        }
    }

    fn incident_mut(&mut self) -> &mut Incident {
        match self {
            Self::Opened(i) | Self::Joined(i) | Self::Repeated(i) => i,
            Self::Escalated { incident, .. } => incident,
        }
    }

    /// The level already reached before this claim.
    pub fn previous_level(&self) -> Option<Level> {
        match self {
            Self::Opened(_) => None,
            Self::Escalated { from, .. } => Some(*from),
            Self::Joined(i) | Self::Repeated(i) => Some(i.level),
        }
    }
}

/// Reads the incident of the node, if it is about `instance_id`.
pub fn read(node: &Node, instance_id: &str) -> Option<Incident> {
    let text = node.metadata.annotations.as_ref()?.get(ANNOTATION)?;
    let incident: Incident = serde_json::from_str(text).ok()?;
    (incident.instance_id == instance_id).then_some(incident)
}

/// The incident id: stable for the instance and readable in Slack threads.
pub fn incident_id(cluster: &str, notice: &Notice) -> String {
    format!(
        "{cluster}/{}/{}",
        notice.instance_id,
        notice.time.format("%Y%m%dT%H%M%SZ")
    )
}

/// Decides what claiming would find, without writing (used as is in dry-run).
pub fn evaluate(existing: Option<Incident>, cluster: &str, notice: &Notice, level: Level) -> Claim {
    let seen = SeenEvent {
        kind: notice.kind.repeat_key(),
        id: notice.event_id.clone(),
        claim: None,
    };
    match existing {
        None => Claim::Opened(Incident {
            id: incident_id(cluster, notice),
            instance_id: notice.instance_id.clone(),
            opened_at: Utc::now(),
            level,
            events: vec![seen],
            drain_outcome: None,
        }),
        Some(mut incident) if incident.level < level => {
            let from = incident.level;
            incident.level = level;
            incident.events.push(seen);
            Claim::Escalated { incident, from }
        }
        Some(incident)
            if incident
                .events
                .iter()
                .any(|e| e.kind == seen.kind || (!e.id.is_empty() && e.id == seen.id)) =>
        {
            Claim::Repeated(incident)
        }
        Some(mut incident) => {
            incident.events.push(seen);
            Claim::Joined(incident)
        }
    }
}

/// Claims the incident for `notice` at `level` on the node, racing other invocations safely.
pub async fn claim(
    nodes: &Api<Node>,
    node_name: &str,
    cluster: &str,
    notice: &Notice,
    level: Level,
    deadline: Instant,
) -> Result<Claim, kube::Error> {
    let token = claim_token();
    let mut attempted: Option<Claim> = None;
    loop {
        let node = retrying(deadline, || nodes.get(node_name)).await?;
        let existing = read(&node, &notice.instance_id);

        // A retried write that conflicts may be conflicting with itself: the first try landed
        // and only its answer was lost.
        let landed = existing.as_ref().is_some_and(|i| {
            i.events
                .iter()
                .any(|e| e.claim.as_deref() == Some(token.as_str()))
        });
        if let (true, Some(claim)) = (landed, attempted.take()) {
            return Ok(claim);
        }

        let mut claim = evaluate(existing, cluster, notice, level);
        if matches!(claim, Claim::Repeated(_)) {
            return Ok(claim);
        }
        if let Some(seen) = claim.incident_mut().events.last_mut() {
            seen.claim = Some(token.clone());
        }
        match write(nodes, &node, claim.incident(), deadline).await {
            Ok(()) => return Ok(claim),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => {
                attempted = Some(claim);
            }
            Err(err) => return Err(err),
        }
    }
}

/// A token no other invocation uses: the standard library seeds every `RandomState` from the
/// operating system's randomness.
fn claim_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

/// Records the drain outcome on the incident, so joined invocations can stop waiting.
pub async fn record_drain_outcome(
    nodes: &Api<Node>,
    node_name: &str,
    instance_id: &str,
    outcome: &str,
    deadline: Instant,
) -> Result<(), kube::Error> {
    loop {
        let node = match retrying(deadline, || nodes.get(node_name)).await {
            Ok(node) => node,
            Err(err) if crate::nodes::status_code(&err) == Some(404) => return Ok(()),
            Err(err) => return Err(err),
        };
        let Some(mut incident) = read(&node, instance_id) else {
            return Ok(());
        };
        incident.drain_outcome = Some(outcome.to_owned());
        match write(nodes, &node, &incident, deadline).await {
            Ok(()) => return Ok(()),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Removes the node's incident record (the instance runs again).
pub async fn close(
    nodes: &Api<Node>,
    node_name: &str,
    instance_id: &str,
    deadline: Instant,
) -> Result<(), kube::Error> {
    loop {
        let node = retrying(deadline, || nodes.get(node_name)).await?;
        if read(&node, instance_id).is_none() {
            return Ok(());
        }
        let rv = node.metadata.resource_version.clone().unwrap_or_default();
        let path = format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"));
        let ops = vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            json!({"op": "remove", "path": path}),
        ];
        match patch_json(nodes, node_name, ops, deadline).await {
            Ok(()) => return Ok(()),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Reads the node's incident now (for waits that watch another invocation's progress).
pub async fn current(
    nodes: &Api<Node>,
    node_name: &str,
    instance_id: &str,
    deadline: Instant,
) -> Result<Option<Incident>, kube::Error> {
    match retrying(deadline, || nodes.get(node_name)).await {
        Ok(node) => Ok(read(&node, instance_id)),
        Err(err) if crate::nodes::status_code(&err) == Some(404) => Ok(None),
        Err(err) => Err(err),
    }
}

async fn write(
    nodes: &Api<Node>,
    node: &Node,
    incident: &Incident,
    deadline: Instant,
) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let rv = node.metadata.resource_version.clone().unwrap_or_default();
    let value = serde_json::to_string(incident).map_err(kube::Error::SerdeError)?;
    let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
    if node.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    let path = format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"));
    ops.push(json!({"op": "add", "path": path, "value": value}));
    patch_json(nodes, &name, ops, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{InstanceState, NoticeKind};

    fn notice(kind: NoticeKind, id: &str) -> Notice {
        Notice {
            kind,
            instance_id: "i-0abc".into(),
            event_id: id.into(),
            time: "2026-12-04T10:00:00Z".parse().unwrap(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            deadline: None,
            lifecycle_action: None,
        }
    }

    fn spot() -> NoticeKind {
        NoticeKind::SpotInterruption {
            instance_action: "terminate".into(),
        }
    }

    #[test]
    fn the_same_kind_twice_is_a_repeat_and_a_new_kind_joins() {
        let first = evaluate(None, "c", &notice(spot(), "e1"), Level::Drain);
        let Claim::Opened(incident) = first else {
            panic!("expected a new incident")
        };
        assert_eq!(incident.id, "c/i-0abc/20261204T100000Z");

        let again = evaluate(
            Some(incident.clone()),
            "c",
            &notice(spot(), "e1"),
            Level::Drain,
        );
        assert!(matches!(again, Claim::Repeated(_)));

        let hook = evaluate(
            Some(incident.clone()),
            "c",
            &notice(NoticeKind::LifecycleTerminate, "e2"),
            Level::Drain,
        );
        assert!(matches!(hook, Claim::Joined(_)));
        assert_eq!(hook.incident().events.len(), 2);
    }

    #[test]
    fn a_termination_escalates_a_drain() {
        let Claim::Opened(incident) = evaluate(None, "c", &notice(spot(), "e1"), Level::Drain)
        else {
            panic!("expected a new incident")
        };
        let gone = notice(
            NoticeKind::StateChange {
                state: InstanceState::Terminated,
            },
            "e3",
        );
        let claim = evaluate(Some(incident), "c", &gone, Level::OutOfService);
        assert!(matches!(
            claim,
            Claim::Escalated {
                from: Level::Drain,
                ..
            }
        ));
        assert_eq!(claim.incident().level, Level::OutOfService);
    }
}
