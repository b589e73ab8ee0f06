//! Gathering what the pending-pods decision needs: the Pending pods and why they wait, the
//! nodes and their pod capacity, the CNI's configuration and the subnets' free addresses.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;
use tokio::time::Instant;

use crate::aws::{AwsError, aws_err};
use crate::cni::{self, CniFacts};
use crate::maxpods::{CniMode, InstanceTypeFacts, describe_instance_types, max_pods};
use crate::nodes::{instance_id_of, retrying};

/// Why a pod is Pending.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case", tag = "cause", content = "detail")]
pub enum Cause {
    /// `FailedScheduling ... Too many pods`: every node is at its max pods.
    PodCountLimit,
    /// `FailedCreatePodSandBox ... failed to assign an IP address`, persisting.
    IpAssignment,
    /// `Insufficient vpc.amazonaws.com/pod-eni`: Security Groups for Pods has no branch ENI.
    PodEni,
    /// Scheduled, but the subnet has no addresses (EC2 `InsufficientFreeAddressesInSubnet`,
    /// `InsufficientCidrBlocks`).
    SubnetExhausted,
    /// Anything else (CPU, memory, affinity, volumes): not an IP problem.
    Other(String),
    /// No event explains it yet.
    Unknown,
}

impl Cause {
    /// Whether prefix delegation (more addresses per node) addresses this cause.
    pub fn is_ip_capacity(&self) -> bool {
        matches!(self, Self::PodCountLimit | Self::IpAssignment)
    }

    pub fn describe(&self) -> String {
        match self {
            Self::PodCountLimit => "pod-count limit (Too many pods)".into(),
            Self::IpAssignment => "IP assignment failures (failed to assign an IP address)".into(),
            Self::PodEni => "no branch ENI for Security Groups for Pods".into(),
            Self::SubnetExhausted => "subnet out of addresses".into(),
            Self::Other(reason) => format!("not an IP problem ({reason})"),
            Self::Unknown => "no event yet".into(),
        }
    }
}

/// A Pending pod and its cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingPod {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub cause: Cause,
}

/// One node's pod capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeCapacity {
    pub name: String,
    pub instance_id: Option<String>,
    pub instance_type: String,
    pub node_group: Option<String>,
    /// `status.allocatable.pods`: the kubelet's max pods now.
    pub allocatable: u32,
    /// Pods bound to the node and not finished.
    pub used: u32,
    /// Max pods once prefix delegation is on and the node is replaced.
    pub with_prefix_delegation: u32,
    pub nitro: bool,
    pub trunking: bool,
}

/// A subnet's free addresses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubnetFacts {
    pub id: String,
    pub available: u32,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    pub cluster: String,
    pub pending: Vec<PendingPod>,
    pub nodes: Vec<NodeCapacity>,
    pub cni: CniFacts,
    pub subnets: Vec<SubnetFacts>,
    /// The cluster's IAM role (for the Security Groups for Pods policy).
    pub cluster_role_arn: Option<String>,
}

/// Gathering failed.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    #[error("Kubernetes API, {operation}: {source}")]
    Kube {
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl FactsError {
    pub fn retryable(&self) -> bool {
        match self {
            Self::Aws(e) => e.retryable,
            Self::Cni(cni::CniError::Aws(e)) => e.retryable,
            Self::Cni(cni::CniError::Kube { source, .. }) | Self::Kube { source, .. } => {
                crate::nodes::is_transient(source)
            }
            Self::Cni(_) => false,
        }
    }
}

fn kube(operation: &'static str) -> impl FnOnce(kube::Error) -> FactsError {
    move |source| FactsError::Kube { operation, source }
}

async fn list_all<K>(api: &Api<K>, fields: &str, deadline: Instant) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(500);
    if !fields.is_empty() {
        params = params.fields(fields);
    }
    let mut items = Vec::new();
    loop {
        let page = retrying(deadline, || api.list(&params)).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// How many times an event happened, whichever API wrote it.
fn event_count(event: &Event) -> i32 {
    event
        .count
        .or_else(|| event.series.as_ref().and_then(|s| s.count))
        .unwrap_or(1)
}

/// Classifies one pod from its events (most recent first).
pub fn classify(pod_scheduled: bool, events: &[&Event], persist_after: i32) -> Cause {
    for event in events {
        let message = event.message.as_deref().unwrap_or_default();
        match event.reason.as_deref() {
            Some("FailedScheduling") if !pod_scheduled => {
                if message.contains("Too many pods") {
                    return Cause::PodCountLimit;
                }
                if message.contains("Insufficient vpc.amazonaws.com/pod-eni") {
                    return Cause::PodEni;
                }
                let reason = message
                    .split(':')
                    .nth(1)
                    .unwrap_or(message)
                    .split(". preemption")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_end_matches('.')
                    .to_owned();
                return Cause::Other(reason);
            }
            Some("FailedCreatePodSandBox") => {
                if message.contains("InsufficientFreeAddressesInSubnet")
                    || message.contains("InsufficientCidrBlocks")
                {
                    return Cause::SubnetExhausted;
                }
                // Single failures are normal while a branch ENI or warm IP is prepared.
                if message.contains("failed to assign an IP address to container")
                    && event_count(event) >= persist_after
                {
                    return Cause::IpAssignment;
                }
            }
            _ => {}
        }
    }
    Cause::Unknown
}

/// Gathers the facts for `cluster`.
pub async fn gather(
    ec2: &aws_sdk_ec2::Client,
    eks: &aws_sdk_eks::Client,
    client: &Client,
    cluster: &str,
    cluster_role_arn: Option<String>,
    deadline: Instant,
) -> Result<Facts, FactsError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let events: Api<Event> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());

    let pending_pods = list_all(&pods, "status.phase=Pending", deadline)
        .await
        .map_err(kube("list Pending pods"))?;
    let active_pods = list_all(
        &pods,
        "status.phase!=Succeeded,status.phase!=Failed",
        deadline,
    )
    .await
    .map_err(kube("list pods"))?;
    let mut pod_events: Vec<Event> = Vec::new();
    for reason in ["FailedScheduling", "FailedCreatePodSandBox"] {
        let found = list_all(
            &events,
            &format!("involvedObject.kind=Pod,reason={reason}"),
            deadline,
        )
        .await
        .map_err(kube("list events"))?;
        pod_events.extend(found);
    }
    // Newest first: core events written through events.k8s.io carry only eventTime.
    pod_events.sort_by_key(|e| {
        std::cmp::Reverse(
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0)),
        )
    });
    let mut by_pod: HashMap<(String, String), Vec<&Event>> = HashMap::new();
    for event in &pod_events {
        let o = &event.involved_object;
        by_pod
            .entry((
                o.namespace.clone().unwrap_or_default(),
                o.name.clone().unwrap_or_default(),
            ))
            .or_default()
            .push(event);
    }

    let pending = pending_pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let namespace = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            let events = by_pod
                .get(&(namespace.clone(), name.clone()))
                .cloned()
                .unwrap_or_default();
            PendingPod {
                cause: classify(node.is_some(), &events, 3),
                namespace,
                name,
                node,
            }
        })
        .collect();

    let node_list = list_all(&nodes_api, "", deadline)
        .await
        .map_err(kube("list nodes"))?;
    let mut used: HashMap<String, u32> = HashMap::new();
    for pod in &active_pods {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *used.entry(node).or_default() += 1;
        }
    }
    let label = |n: &Node, key: &str| n.metadata.labels.as_ref().and_then(|l| l.get(key).cloned());
    let mut types: Vec<String> = node_list
        .iter()
        .filter_map(|n| {
            label(n, "node.kubernetes.io/instance-type")
                .or_else(|| label(n, "beta.kubernetes.io/instance-type"))
        })
        .collect();
    types.sort();
    types.dedup();
    let type_facts: BTreeMap<String, InstanceTypeFacts> = describe_instance_types(ec2, &types)
        .await?
        .into_iter()
        .map(|f| (f.instance_type.clone(), f))
        .collect();
    let cni = cni::discover(eks, client, cluster, deadline).await?;

    let nodes: Vec<NodeCapacity> = node_list
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let instance_type = label(n, "node.kubernetes.io/instance-type").unwrap_or_default();
            let facts = type_facts.get(&instance_type);
            let allocatable = n
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get("pods"))
                .and_then(|q| q.0.parse::<u32>().ok())
                .unwrap_or(0);
            let mode = CniMode {
                prefix_delegation: true,
                custom_networking: cni.custom_networking(),
            };
            NodeCapacity {
                instance_id: instance_id_of(n).map(str::to_owned),
                node_group: label(n, "eks.amazonaws.com/nodegroup"),
                allocatable,
                used: used.get(&name).copied().unwrap_or(0),
                with_prefix_delegation: facts
                    .map(|f| max_pods(f, mode).max_pods)
                    .unwrap_or(allocatable),
                nitro: facts.is_some_and(InstanceTypeFacts::supports_prefix_delegation),
                trunking: facts.is_some_and(InstanceTypeFacts::supports_trunking),
                instance_type,
                name,
            }
        })
        .collect();

    let subnets = subnets_of(ec2, &nodes).await?;
    Ok(Facts {
        cluster: cluster.to_owned(),
        pending,
        nodes,
        cni,
        subnets,
        cluster_role_arn,
    })
}

async fn subnets_of(
    ec2: &aws_sdk_ec2::Client,
    nodes: &[NodeCapacity],
) -> Result<Vec<SubnetFacts>, AwsError> {
    let ids: Vec<String> = nodes.iter().filter_map(|n| n.instance_id.clone()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let instances = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await;
    let instances = match instances {
        Ok(out) => out,
        // Nodes of instances EC2 no longer knows (or test nodes): no subnet facts.
        Err(err) => {
            let err = AwsError::from_sdk("DescribeInstances", &ids.join(","), err);
            if err.code.starts_with("InvalidInstanceID") {
                return Ok(Vec::new());
            }
            return Err(err);
        }
    };
    let mut subnet_ids: Vec<String> = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.subnet_id().map(str::to_owned))
        .collect();
    subnet_ids.sort();
    subnet_ids.dedup();
    if subnet_ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = ec2
        .describe_subnets()
        .set_subnet_ids(Some(subnet_ids.clone()))
        .send()
        .await
        .map_err(aws_err("DescribeSubnets", &subnet_ids.join(",")))?;
    Ok(out
        .subnets()
        .iter()
        .map(|s| SubnetFacts {
            id: s.subnet_id().unwrap_or_default().to_owned(),
            available: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(reason: &str, message: &str, count: i32) -> Event {
        serde_json::from_value(json!({"metadata": {"name": "e"}, "involvedObject": {},
            "reason": reason, "message": message, "count": count}))
        .unwrap()
    }

    #[test]
    fn scheduler_messages_map_to_causes() {
        let too_many = event(
            "FailedScheduling",
            "0/3 nodes are available: 3 Too many pods. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
            1,
        );
        assert_eq!(classify(false, &[&too_many], 3), Cause::PodCountLimit);
        let eni = event(
            "FailedScheduling",
            "0/3 nodes are available: 3 Insufficient vpc.amazonaws.com/pod-eni.",
            1,
        );
        assert_eq!(classify(false, &[&eni], 3), Cause::PodEni);
        let cpu = event(
            "FailedScheduling",
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
            1,
        );
        assert_eq!(
            classify(false, &[&cpu], 3),
            Cause::Other("3 Insufficient cpu".into())
        );
    }

    #[test]
    fn ip_assignment_counts_only_when_it_persists() {
        let once = event(
            "FailedCreatePodSandBox",
            "plugin type=\"aws-cni\" name=\"aws-cni\" failed (add): add cmd: failed to assign an IP address to container",
            1,
        );
        assert_eq!(classify(true, &[&once], 3), Cause::Unknown);
        let often = event(
            "FailedCreatePodSandBox",
            "add cmd: failed to assign an IP address to container",
            14,
        );
        assert_eq!(classify(true, &[&often], 3), Cause::IpAssignment);
        let subnet = event(
            "FailedCreatePodSandBox",
            "InsufficientFreeAddressesInSubnet: no free addresses",
            2,
        );
        assert_eq!(classify(true, &[&subnet], 3), Cause::SubnetExhausted);
    }
}
