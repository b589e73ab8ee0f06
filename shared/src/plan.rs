//! The decision for one interruption notice: a pure function from facts to a plan of actions,
//! each with its reason. Executing, logging and reporting all speak of this plan.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::events::{Notice, NoticeKind};
use crate::incident::{Claim, Level};

/// One thing to do to the cluster or to Auto Scaling.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Mark the node unschedulable.
    Cordon,
    /// Add the `eks-remedy.io/interruption` taint, keeping the others.
    TaintInterruption,
    /// Evict the node's pods before the deadline.
    Drain { deadline: DateTime<Utc> },
    /// Add `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`.
    TaintOutOfService,
    /// Wait for the drain another invocation of the same incident is running.
    AwaitDrain,
    /// CompleteLifecycleAction CONTINUE.
    CompleteLifecycleAction,
    /// A change made by another function (prefix delegation, Pod Identity association, ...).
    Remediation { name: String },
}

impl Action {
    pub fn name(&self) -> &str {
        match self {
            Self::Remediation { name } => name,
            Self::Cordon => "cordon",
            Self::TaintInterruption => "taint-interruption",
            Self::Drain { .. } => "drain",
            Self::TaintOutOfService => "taint-out-of-service",
            Self::AwaitDrain => "await-drain",
            Self::CompleteLifecycleAction => "complete-lifecycle-action",
        }
    }
}

/// An action and why it is taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
}

/// What to do about one notice.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Set when nothing is done to the node, with why.
    pub no_action: Option<String>,
}

impl Plan {
    fn step(&mut self, action: Action, reason: impl Into<String>) {
        self.steps.push(Step {
            action,
            reason: reason.into(),
        });
    }

    pub fn has(&self, name: &str) -> bool {
        self.steps.iter().any(|s| s.action.name() == name)
    }
}

/// How far a notice asks eks-remedy to go, or why it asks nothing.
pub fn target_level(notice: &Notice, config: &Config) -> Result<Level, String> {
    match &notice.kind {
        NoticeKind::SpotInterruption { .. }
        | NoticeKind::LifecycleTerminate
        | NoticeKind::HealthScheduledChange { .. } => Ok(Level::Drain),
        NoticeKind::RebalanceRecommendation if config.drain_on_rebalance => Ok(Level::Drain),
        NoticeKind::RebalanceRecommendation => Ok(Level::Cordon),
        NoticeKind::StateChange { state } if state.is_gone() => Ok(Level::OutOfService),
        NoticeKind::StateChange { state } if state.is_stopping() => Ok(Level::Drain),
        NoticeKind::StateChange { state } => Err(format!("instance state {state} needs no action")),
    }
}

/// Decides the plan for a notice about a node that exists, given what the incident record says.
pub fn decide(notice: &Notice, level: Level, claim: &Claim, deadline: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    let done = claim.previous_level();
    let needs = |l: Level| level >= l && done.is_none_or(|d| d < l);
    let why = notice.kind.describe();

    if let Claim::Repeated(incident) = claim {
        plan.no_action = Some(format!(
            "repeated {} for incident {}: already handled",
            notice.kind.name(),
            incident.id
        ));
        if notice.lifecycle_action.is_some() {
            // The first delivery may still be draining: completing now would let Auto Scaling
            // terminate the instance under the pods.
            if incident.level >= Level::Drain && incident.drain_outcome.is_none() {
                plan.step(
                    Action::AwaitDrain,
                    "the first delivery is still draining this node",
                );
            }
            plan.step(
                Action::CompleteLifecycleAction,
                "a repeated hook event: the action completes once the drain is over (Auto Scaling answers 'no active lifecycle action' if it already is)",
            );
        }
        return plan;
    }

    if needs(Level::Cordon) {
        plan.step(
            Action::Cordon,
            format!("{why}: no new pods on a node that is going away"),
        );
    }
    if level == Level::Drain && needs(Level::Drain) {
        plan.step(
            Action::TaintInterruption,
            "mark the interruption on the node for people and schedulers",
        );
        plan.step(
            Action::Drain { deadline },
            format!(
                "move pods through the eviction API before {}",
                deadline.format("%H:%M:%S UTC")
            ),
        );
    }
    if needs(Level::OutOfService) {
        plan.step(
            Action::TaintOutOfService,
            "the instance is gone: release its pods and volumes now instead of after 6 minutes",
        );
    }
    if notice.lifecycle_action.is_some() {
        if plan.steps.is_empty()
            && done == Some(Level::Drain)
            && claim.incident().drain_outcome.is_none()
        {
            plan.step(
                Action::AwaitDrain,
                "another invocation is draining this node",
            );
        }
        plan.step(
            Action::CompleteLifecycleAction,
            "let Auto Scaling terminate the instance once its pods have moved",
        );
    }
    if plan.steps.is_empty() {
        plan.no_action = Some(format!(
            "incident {} already went as far as this {} asks",
            claim.incident().id,
            notice.kind.name()
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::InstanceState;
    use crate::incident::evaluate;

    fn notice(kind: NoticeKind) -> Notice {
        Notice {
            event_id: format!("event-{}", kind.name()),
            kind,
            instance_id: "i-0abc".into(),
            time: "2026-12-04T10:00:00Z".parse().unwrap(),
            region: "us-east-1".into(),
            account: "1".into(),
            deadline: None,
            lifecycle_action: None,
        }
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.action.name()).collect()
    }

    fn spot() -> Notice {
        notice(NoticeKind::SpotInterruption {
            instance_action: "terminate".into(),
        })
    }

    #[test]
    fn spot_warning_cordons_taints_and_drains() {
        let n = spot();
        let claim = evaluate(None, "c", &n, Level::Drain);
        let plan = decide(&n, Level::Drain, &claim, n.time);
        assert_eq!(names(&plan), ["cordon", "taint-interruption", "drain"]);
        assert!(plan.steps.iter().all(|s| !s.reason.is_empty()));
    }

    #[test]
    fn rebalance_cordons_only_unless_configured() {
        let n = notice(NoticeKind::RebalanceRecommendation);
        let config = Config::default();
        assert_eq!(target_level(&n, &config), Ok(Level::Cordon));
        let claim = evaluate(None, "c", &n, Level::Cordon);
        assert_eq!(
            names(&decide(&n, Level::Cordon, &claim, n.time)),
            ["cordon"]
        );
        let config = Config {
            drain_on_rebalance: true,
            ..Config::default()
        };
        assert_eq!(target_level(&n, &config), Ok(Level::Drain));
    }

    #[test]
    fn termination_after_a_drain_only_adds_the_out_of_service_taint() {
        let warning = spot();
        let first = evaluate(None, "c", &warning, Level::Drain);
        let gone = notice(NoticeKind::StateChange {
            state: InstanceState::Terminated,
        });
        let claim = evaluate(
            Some(first.incident().clone()),
            "c",
            &gone,
            Level::OutOfService,
        );
        assert_eq!(
            names(&decide(&gone, Level::OutOfService, &claim, gone.time)),
            ["taint-out-of-service"]
        );
    }

    #[test]
    fn a_repeat_does_nothing_to_the_node() {
        let n = spot();
        let first = evaluate(None, "c", &n, Level::Drain);
        let claim = evaluate(Some(first.incident().clone()), "c", &n, Level::Drain);
        let plan = decide(&n, Level::Drain, &claim, n.time);
        assert!(plan.steps.is_empty());
        assert!(plan.no_action.unwrap().contains("already handled"));
    }

    #[test]
    fn a_hook_joining_a_running_drain_waits_then_completes() {
        let warning = spot();
        let first = evaluate(None, "c", &warning, Level::Drain);
        let mut hook = notice(NoticeKind::LifecycleTerminate);
        hook.lifecycle_action = Some(crate::events::LifecycleAction {
            auto_scaling_group: "g".into(),
            hook: "h".into(),
            token: None,
        });
        let claim = evaluate(Some(first.incident().clone()), "c", &hook, Level::Drain);
        assert_eq!(
            names(&decide(&hook, Level::Drain, &claim, hook.time)),
            ["await-drain", "complete-lifecycle-action"]
        );
    }

    #[test]
    fn pending_and_running_states_ask_nothing() {
        let n = notice(NoticeKind::StateChange {
            state: InstanceState::Pending,
        });
        assert!(
            target_level(&n, &Config::default())
                .unwrap_err()
                .contains("pending")
        );
    }
}
