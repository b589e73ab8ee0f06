//! Reports: what eks-remedy decided and did, published to SNS in the Amazon Q Developer in chat
//! applications custom notification format (so it renders in Slack), with a plain-text variant
//! for email subscribers and message attributes for subscription filters.
//!
//! Format: <https://docs.aws.amazon.com/chatbot/latest/adminguide/custom-notifs.html>.

use aws_sdk_sns::types::MessageAttributeValue;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::aws::{AwsError, aws_err};
use crate::drain::BlockedPod;
use crate::plan::Step;

/// Where a report stands in its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Start,
    #[default]
    End,
}

/// The explicit outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Work has begun (start reports).
    Started,
    /// Every pod that had to move has moved.
    Drained,
    /// Some pods could not be moved.
    PartiallyDrained,
    /// Cordoned only (rebalance recommendation).
    Cordoned,
    /// The instance is gone and the out-of-service taint released its pods.
    OutOfService,
    /// The instance went away while the drain was running.
    TerminationRaced,
    /// Not eks-remedy's to act on.
    Ignored,
    /// Nothing to do (no node, repeated event, already done).
    Skipped,
    /// A fix was applied (or, in dry-run, would have been).
    Remediated,
    /// eks-remedy found the cause but cannot fix it: a person must act.
    NeedsAttention,
    /// The problem is gone (alarm back to OK, pending pods placed).
    Resolved,
    /// An action failed.
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Drained => "drained",
            Self::PartiallyDrained => "partially-drained",
            Self::Cordoned => "cordoned",
            Self::OutOfService => "out-of-service",
            Self::TerminationRaced => "termination-raced",
            Self::Ignored => "ignored",
            Self::Skipped => "skipped",
            Self::Remediated => "remediated",
            Self::NeedsAttention => "needs-attention",
            Self::Resolved => "resolved",
            Self::Failed => "failed",
        }
    }
}

/// A step of the plan and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    #[serde(flatten)]
    pub step: Step,
    /// `done`, `unchanged`, `dry-run`, `failed: ...`.
    pub result: String,
}

/// One report: the facts, the plan and the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Report {
    pub incident_id: String,
    pub stage: Option<Stage>,
    pub outcome: Option<Outcome>,
    /// One sentence saying what happened.
    pub summary: String,
    pub kind: String,
    pub event_id: String,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub instance_id: String,
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    pub node_group: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    /// Further labelled facts (capacity before and after, CNI owner, ...).
    pub facts: Vec<(String, String)>,
    pub pods_to_move: Vec<String>,
    pub evicted: Vec<String>,
    pub deleted: Vec<String>,
    pub blocked: Vec<BlockedPod>,
    pub notes: Vec<String>,
    pub steps: Vec<StepResult>,
    pub next_steps: Vec<String>,
    pub dry_run: bool,
}

const LIST_LIMIT: usize = 10;

fn listed(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(LIST_LIMIT)
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_LIMIT {
        text.push_str(&format!(" and {} more", items.len() - LIST_LIMIT));
    }
    text
}

impl Report {
    fn outcome_name(&self) -> &'static str {
        self.outcome.map(Outcome::name).unwrap_or("unknown")
    }

    /// The title line shown in Slack and used as the email subject.
    pub fn title(&self) -> String {
        let icon = match self.outcome {
            Some(
                Outcome::Drained
                | Outcome::Cordoned
                | Outcome::OutOfService
                | Outcome::Remediated
                | Outcome::Resolved,
            ) => ":white_check_mark:",
            Some(Outcome::Started) => ":hourglass_flowing_sand:",
            Some(Outcome::Ignored | Outcome::Skipped) => ":information_source:",
            _ => ":warning:",
        };
        let dry = if self.dry_run { " [dry run]" } else { "" };
        let target = self
            .node
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(Some(self.instance_id.as_str()).filter(|s| !s.is_empty()))
            .or(self.cluster.as_deref())
            .unwrap_or("cluster");
        format!(
            "{icon} eks-remedy{dry}: {} {} on {}",
            self.kind,
            self.outcome_name(),
            target
        )
    }

    /// The Markdown description for Slack.
    pub fn description(&self) -> String {
        let mut lines = vec![self.summary.clone(), String::new()];
        let field = |name: &str, value: Option<&str>| value.map(|v| format!("*{name}:* {v}"));
        lines.extend(
            [
                field("Cluster", self.cluster.as_deref()),
                field("Node", self.node.as_deref()),
                field(
                    "Instance",
                    Some(self.instance_id.as_str()).filter(|s| !s.is_empty()),
                ),
                field("Type", self.instance_type.as_deref()),
                field("Zone", self.zone.as_deref()),
                field("Node group", self.node_group.as_deref()),
            ]
            .into_iter()
            .flatten(),
        );
        for (name, value) in &self.facts {
            lines.push(format!("*{name}:* {value}"));
        }
        if let Some(deadline) = self.deadline {
            lines.push(format!(
                "*Deadline:* {}",
                deadline.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        if !self.pods_to_move.is_empty() {
            lines.push(format!(
                "*Pods to move ({}):* {}",
                self.pods_to_move.len(),
                listed(&self.pods_to_move)
            ));
        }
        if !self.evicted.is_empty() {
            lines.push(format!(
                "*Evicted ({}):* {}",
                self.evicted.len(),
                listed(&self.evicted)
            ));
        }
        if !self.deleted.is_empty() {
            lines.push(format!(
                "*Deleted at the deadline ({}):* {}",
                self.deleted.len(),
                listed(&self.deleted)
            ));
        }
        for blocked in &self.blocked {
            lines.push(format!("*Blocked:* `{}`: {}", blocked.pod, blocked.reason));
        }
        for note in &self.notes {
            lines.push(format!("_{note}_"));
        }
        if !self.steps.is_empty() {
            lines.push("*Actions:*".into());
            for s in &self.steps {
                lines.push(format!(
                    "- {}: {} ({})",
                    s.step.action.name(),
                    s.result,
                    s.step.reason
                ));
            }
        }
        lines.join("\n")
    }

    /// The Amazon Q Developer in chat applications custom notification.
    pub fn chat_message(&self) -> Value {
        let mut context = serde_json::Map::new();
        for (k, v) in [
            ("cluster", self.cluster.clone()),
            ("node", self.node.clone()),
            (
                "instanceId",
                Some(self.instance_id.clone()).filter(|s| !s.is_empty()),
            ),
            ("kind", Some(self.kind.clone())),
            ("outcome", Some(self.outcome_name().to_owned())),
            ("dryRun", Some(self.dry_run.to_string())),
        ] {
            if let Some(v) = v {
                context.insert(k.into(), Value::String(v));
            }
        }
        let related: Vec<String> = [self.instance_id.clone()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .chain(self.node.clone())
            .chain(self.cluster.clone().filter(|_| self.instance_id.is_empty()))
            .collect();
        json!({
            "version": "1.0",
            "source": "custom",
            "id": format!("{}:{}:{}", self.incident_id, self.event_id, self.outcome_name()),
            "content": {
                "textType": "client-markdown",
                "title": self.title(),
                "description": self.description(),
                "nextSteps": self.next_steps,
                "keywords": [self.kind, self.outcome_name(), self.cluster.clone().unwrap_or_default()],
            },
            "metadata": {
                "threadId": self.incident_id,
                "summary": self.summary,
                "eventType": self.kind,
                "relatedResources": related,
                "additionalContext": context,
            }
        })
    }

    /// The plain-text variant for email.
    pub fn plain_text(&self) -> String {
        let mut text = self
            .title()
            .split_once(' ')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default();
        text.push_str("\n\n");
        text.push_str(&self.description().replace('*', "").replace(['`', '_'], ""));
        if !self.next_steps.is_empty() {
            text.push_str("\n\nNext steps:\n");
            for step in &self.next_steps {
                text.push_str(&format!("- {step}\n"));
            }
        }
        text.push_str(&format!("\nIncident: {}\n", self.incident_id));
        text
    }
}

/// Where reports go.
#[derive(Clone, Debug)]
pub struct Notifier {
    sns: Option<(aws_sdk_sns::Client, String)>,
}

impl Notifier {
    /// Reports go to `topic_arn`, or only to the log when it is `None`.
    pub fn new(sns: aws_sdk_sns::Client, topic_arn: Option<String>) -> Self {
        Self {
            sns: topic_arn.map(|t| (sns, t)),
        }
    }

    /// Publishes a report; returns the SNS message id, or `None` when there is no topic.
    pub async fn publish(&self, report: &Report) -> Result<Option<String>, AwsError> {
        tracing::info!(
            incident = %report.incident_id,
            cluster = report.cluster.as_deref().unwrap_or(""),
            node = report.node.as_deref().unwrap_or(""),
            instance_id = %report.instance_id,
            outcome = report.outcome_name(),
            "report"
        );
        let Some((sns, topic)) = &self.sns else {
            return Ok(None);
        };
        let chat = report.chat_message().to_string();
        let body = json!({
            "default": chat,
            "https": chat,
            "email": report.plain_text(),
        });
        let attribute = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(if v.is_empty() { "unknown" } else { v })
                .build()
        };
        let subject: String = report
            .plain_text()
            .lines()
            .next()
            .unwrap_or("eks-remedy")
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(99)
            .collect();
        let output = sns
            .publish()
            .topic_arn(topic)
            .message_structure("json")
            .message(body.to_string())
            .subject(subject)
            .message_attributes(
                "cluster",
                attribute(report.cluster.as_deref().unwrap_or_default())
                    .map_err(|e| build_error(topic, e))?,
            )
            .message_attributes(
                "kind",
                attribute(&report.kind).map_err(|e| build_error(topic, e))?,
            )
            .message_attributes(
                "outcome",
                attribute(report.outcome_name()).map_err(|e| build_error(topic, e))?,
            )
            .send()
            .await
            .map_err(aws_err("Publish", topic))?;
        Ok(output.message_id().map(str::to_owned))
    }
}

fn build_error(topic: &str, err: impl std::fmt::Display) -> AwsError {
    AwsError {
        operation: "Publish",
        resource: topic.to_owned(),
        code: "InvalidMessageAttribute".into(),
        message: err.to_string(),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            incident_id: "prod/i-1/20261204T100000Z".into(),
            outcome: Some(Outcome::PartiallyDrained),
            summary: "Drained 3 of 4 pods.".into(),
            kind: "spot-interruption".into(),
            cluster: Some("prod".into()),
            node: Some("ip-10-0-1-11.ec2.internal".into()),
            instance_id: "i-1".into(),
            blocked: vec![BlockedPod {
                pod: crate::drain::PodRef {
                    namespace: "shop".into(),
                    name: "checkout-1".into(),
                },
                pdb: Some("checkout-pdb".into()),
                reason: "PodDisruptionBudget checkout-pdb: needs 2 healthy pods".into(),
            }],
            next_steps: vec!["Check checkout-pdb".into()],
            ..Report::default()
        }
    }

    #[test]
    fn chat_message_follows_the_custom_notification_schema() {
        let m = report().chat_message();
        assert_eq!(m["version"], "1.0");
        assert_eq!(m["source"], "custom");
        assert_eq!(m["metadata"]["threadId"], "prod/i-1/20261204T100000Z");
        assert!(
            m["content"]["title"]
                .as_str()
                .unwrap()
                .contains("partially-drained")
        );
        assert!(
            m["content"]["description"]
                .as_str()
                .unwrap()
                .contains("checkout-pdb")
        );
        assert_eq!(m["content"]["nextSteps"][0], "Check checkout-pdb");
    }

    #[test]
    fn plain_text_has_no_markdown() {
        let text = report().plain_text();
        assert!(!text.contains('*') && !text.contains('`'));
        assert!(text.contains("Blocked: shop/checkout-1"));
    }
}
