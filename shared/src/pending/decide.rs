//! The pending-pods decision: a pure function from [`Facts`] to the steps that fix what can be
//! fixed, and the causes a person must handle.

use std::collections::BTreeMap;

use serde::Serialize;

use super::facts::{Cause, Facts};
use crate::cni::Version;

/// The first VPC CNI release with prefix delegation.
pub const PREFIX_DELEGATION_SINCE: Version = Version(1, 9, 0);
/// A /28 prefix needs 16 contiguous free addresses.
const PREFIX_SIZE: u32 = 16;
/// The policy Security Groups for Pods needs on the cluster role.
pub const VPC_RESOURCE_CONTROLLER_POLICY: &str =
    "arn:aws:iam::aws:policy/AmazonEKSVPCResourceController";

/// What the decision may do beyond the CNI configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub allow_node_replacement: bool,
    pub allow_pod_eni: bool,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Step {
    /// ENABLE_PREFIX_DELEGATION=true (and WARM_PREFIX_TARGET=1 unless set).
    EnablePrefixDelegation,
    /// Roll the managed node groups so kubelets get the new max pods.
    ReplaceNodes { node_groups: Vec<String> },
    /// ENABLE_POD_ENI=true.
    EnablePodEni,
    /// Attach AmazonEKSVPCResourceController to the cluster role.
    AttachVpcResourceController { role_arn: String },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Self::EnablePrefixDelegation => "enable-prefix-delegation",
            Self::ReplaceNodes { .. } => "replace-nodes",
            Self::EnablePodEni => "enable-pod-eni",
            Self::AttachVpcResourceController { .. } => "attach-vpc-resource-controller",
        }
    }
}

/// Pod slots across the cluster, now and once prefix delegation reaches every Nitro node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub nodes: u32,
    pub before: u32,
    pub after: u32,
    pub used: u32,
    pub pending: u32,
    pub pending_after: u32,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Decision {
    pub steps: Vec<(Step, String)>,
    /// Pending pods per cause.
    pub by_cause: BTreeMap<String, u32>,
    pub capacity: Option<Capacity>,
    /// Why what is wrong cannot be fixed here.
    pub blockers: Vec<String>,
    pub next_steps: Vec<String>,
    pub notes: Vec<String>,
    /// Pending pods that eks-remedy is about (IP, ENI and subnet causes).
    pub ip_related: u32,
}

fn join(items: impl IntoIterator<Item = String>) -> String {
    let mut v: Vec<String> = items.into_iter().collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

/// The nodes' subnets and their free addresses, for reports.
fn free_addresses(facts: &Facts) -> String {
    join(
        facts
            .subnets
            .iter()
            .map(|s| format!("{} ({} free)", s.id, s.available)),
    )
}

/// Decides what to do about the Pending pods in `facts`.
pub fn decide(facts: &Facts, settings: Settings) -> Decision {
    let mut d = Decision::default();
    let count =
        |f: &dyn Fn(&Cause) -> bool| facts.pending.iter().filter(|p| f(&p.cause)).count() as u32;
    for pod in &facts.pending {
        let key = match &pod.cause {
            Cause::Other(_) => "not an IP problem".to_owned(),
            other => other.describe(),
        };
        *d.by_cause.entry(key).or_default() += 1;
    }
    let ip = count(&|c| c.is_ip_capacity());
    let eni = count(&|c| *c == Cause::PodEni);
    let subnet = count(&|c| *c == Cause::SubnetExhausted);
    let other = count(&|c| matches!(c, Cause::Other(_)));
    d.ip_related = ip + eni + subnet;

    if other > 0 {
        let reasons = join(
            facts
                .pending
                .iter()
                .filter_map(|p| match &p.cause {
                    Cause::Other(r) => Some(format!("{}/{}: {r}", p.namespace, p.name)),
                    _ => None,
                })
                .take(5),
        );
        d.notes.push(format!("{other} pods are Pending for reasons that are not IP problems and are left alone: {reasons}"));
    }
    if ip > 0 {
        decide_capacity(facts, settings, ip, &mut d);
    }
    if eni > 0 {
        decide_pod_eni(facts, settings, eni, &mut d);
    }
    if subnet > 0 {
        let subnets = free_addresses(facts);
        d.blockers.push(format!(
            "{subnet} pods cannot get an address: the subnets are exhausted ({subnets})"
        ));
        d.next_steps.push("Add subnets or a secondary CIDR to the VPC (custom networking) for the nodes; prefix delegation cannot help an exhausted subnet.".into());
    }
    d
}

fn decide_capacity(facts: &Facts, settings: Settings, pending: u32, d: &mut Decision) {
    let nodes = &facts.nodes;
    let nitro: Vec<_> = nodes.iter().filter(|n| n.nitro).collect();
    let before: u32 = nodes.iter().map(|n| n.allocatable).sum();
    let after: u32 = nodes
        .iter()
        .map(|n| {
            // Replaced nodes get the prefix-delegation value, which can be lower than today's
            // (c5.4xlarge: 234 -> 110); such groups are not replaced (see below).
            if n.nitro && n.with_prefix_delegation > n.allocatable {
                n.with_prefix_delegation
            } else {
                n.allocatable
            }
        })
        .sum();
    let used: u32 = nodes.iter().map(|n| n.used).sum();
    let free_after = after.saturating_sub(used);
    d.capacity = Some(Capacity {
        nodes: nodes.len() as u32,
        before,
        after,
        used,
        pending,
        pending_after: pending.saturating_sub(free_after),
    });

    if nitro.is_empty() {
        let types = join(nodes.iter().map(|n| n.instance_type.clone()));
        d.blockers.push(format!(
            "no node runs a Nitro instance type ({types}): prefix delegation cannot raise their max pods"
        ));
        d.next_steps.push("Add a node group of a Nitro instance type (for example c5, m5, m6i) and move the workloads there, or add nodes.".into());
        return;
    }
    let old_groups = join(nodes.iter().filter(|n| !n.nitro).map(|n| {
        format!(
            "{} ({})",
            n.node_group.clone().unwrap_or_else(|| n.name.clone()),
            n.instance_type
        )
    }));
    if !old_groups.is_empty() {
        d.notes.push(format!(
            "non-Nitro nodes keep their current max pods: {old_groups}"
        ));
    }
    if facts.cni.custom_networking() {
        d.notes.push("custom networking is on: the primary ENI hosts no pods, so the projection leaves it out".into());
    }

    if facts.cni.prefix_delegation() {
        let stale: Vec<_> = nitro
            .iter()
            .filter(|n| n.allocatable < n.with_prefix_delegation)
            .collect();
        if stale.is_empty() {
            d.blockers.push("prefix delegation is on and every node already runs at its prefix-delegation max pods: the cluster is full".into());
            d.next_steps.push(
                "Add nodes (raise the node group's desired size) or larger instance types.".into(),
            );
            return;
        }
        replace_nodes(
            facts,
            settings,
            &stale
                .iter()
                .map(|n| n.node_group.clone())
                .collect::<Vec<_>>(),
            d,
        );
        return;
    }

    match facts.cni.version {
        Some(v) if v < PREFIX_DELEGATION_SINCE => {
            d.blockers.push(format!("the VPC CNI is {v}, older than {PREFIX_DELEGATION_SINCE}, the first with prefix delegation"));
            d.next_steps.push(format!("Upgrade the vpc-cni add-on to {PREFIX_DELEGATION_SINCE} or later, then run eks-remedy again."));
            return;
        }
        None => d.notes.push(
            "the VPC CNI's version could not be read; prefix delegation needs v1.9.0 or later"
                .into(),
        ),
        _ => {}
    }
    // Limitation: free addresses are counted per subnet; a fragmented subnet may still lack a
    // contiguous /28, which EC2 then reports as InsufficientCidrBlocks on the nodes (diagnosed as
    // a subnet problem on the next run).
    if !facts.subnets.is_empty() && facts.subnets.iter().all(|s| s.available < PREFIX_SIZE) {
        let subnets = free_addresses(facts);
        d.blockers.push(format!(
            "no subnet of the nodes has {PREFIX_SIZE} free addresses for a /28 prefix: {subnets}"
        ));
        d.next_steps.push("Free or add subnet space (or a subnet CIDR reservation for prefixes), then enable prefix delegation.".into());
        return;
    }

    let losing = join(
        nitro
            .iter()
            .filter(|n| n.with_prefix_delegation < n.allocatable)
            .map(|n| {
                format!(
                    "{} ({} {} -> {})",
                    n.node_group.clone().unwrap_or_else(|| n.name.clone()),
                    n.instance_type,
                    n.allocatable,
                    n.with_prefix_delegation
                )
            }),
    );
    if !losing.is_empty() {
        d.notes.push(format!(
            "prefix delegation lowers max pods on these nodes, which are not replaced: {losing}"
        ));
    }
    let per_node = join(nitro.iter().map(|n| {
        format!(
            "{} {} -> {}",
            n.instance_type, n.allocatable, n.with_prefix_delegation
        )
    }));
    d.steps.push((
        Step::EnablePrefixDelegation,
        format!("{pending} pods Pending on the pod-count or IP limit; with prefix delegation Nitro nodes allow more pods ({per_node})"),
    ));
    replace_nodes(
        facts,
        settings,
        &nitro
            .iter()
            .filter(|n| n.with_prefix_delegation > n.allocatable)
            .map(|n| n.node_group.clone())
            .collect::<Vec<_>>(),
        d,
    );
}

fn replace_nodes(facts: &Facts, settings: Settings, groups: &[Option<String>], d: &mut Decision) {
    let mut managed: Vec<String> = groups.iter().flatten().cloned().collect();
    managed.sort();
    managed.dedup();
    let unmanaged = groups.iter().any(Option::is_none);
    if settings.allow_node_replacement && !managed.is_empty() {
        d.steps.push((
            Step::ReplaceNodes {
                node_groups: managed.clone(),
            },
            "kubelets read max pods at launch: running nodes keep the old limit until replaced"
                .into(),
        ));
    } else if !managed.is_empty() {
        for group in &managed {
            d.next_steps.push(format!(
                "Replace the nodes so kubelets pick up the new max pods: aws eks update-nodegroup-version --cluster-name {} --nodegroup-name {group}",
                facts.cluster
            ));
        }
    }
    if unmanaged {
        d.next_steps.push("Nodes outside managed node groups must be replaced (or their bootstrap max pods raised) by their owner.".into());
    }
}

fn decide_pod_eni(facts: &Facts, settings: Settings, pending: u32, d: &mut Decision) {
    if !facts.nodes.iter().any(|n| n.trunking) {
        let types = join(facts.nodes.iter().map(|n| n.instance_type.clone()));
        d.blockers.push(format!("{pending} pods need a branch ENI but no node type supports ENI trunking ({types}; t-family and non-Nitro types do not)"));
        d.next_steps.push("Run pods with SecurityGroupPolicies on a node group of a trunking-capable type (for example m5, c5).".into());
        return;
    }
    let cost = join(
        facts
            .nodes
            .iter()
            .filter(|n| n.trunking)
            .map(|n| format!("{} loses one ENI to the trunk", n.instance_type)),
    );
    if facts.cni.pod_eni() {
        d.blockers.push(format!("{pending} pods wait for a branch ENI although ENABLE_POD_ENI is on: the nodes' branch ENIs are used up"));
        d.next_steps
            .push("Add nodes or larger instance types for pods with SecurityGroupPolicies.".into());
        return;
    }
    if !settings.allow_pod_eni {
        d.blockers.push(format!(
            "{pending} pods need Security Groups for Pods, which is off (ENABLE_POD_ENI)"
        ));
        d.next_steps.push("Set ENABLE_POD_ENI=true on the VPC CNI and attach AmazonEKSVPCResourceController to the cluster role (or let eks-remedy do it: EKS_REMEDY_ALLOW_POD_ENI=true).".into());
        return;
    }
    d.steps.push((
        Step::EnablePodEni,
        format!("{pending} pods need a branch ENI; trunk ENI cost: {cost}"),
    ));
    match &facts.cluster_role_arn {
        Some(role) => d.steps.push((
            Step::AttachVpcResourceController {
                role_arn: role.clone(),
            },
            "the VPC resource controller manages trunk and branch ENIs with this policy".into(),
        )),
        None => d.next_steps.push(
            "Attach AmazonEKSVPCResourceController to the cluster role: its ARN could not be read."
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::{CniFacts, Owner};
    use crate::pending::facts::{NodeCapacity, PendingPod, SubnetFacts};

    fn node(
        i: u32,
        instance_type: &str,
        nitro: bool,
        allocatable: u32,
        with_pd: u32,
        used: u32,
    ) -> NodeCapacity {
        NodeCapacity {
            name: format!("n{i}"),
            instance_id: None,
            instance_type: instance_type.into(),
            node_group: Some("ng-1".into()),
            allocatable,
            used,
            with_prefix_delegation: with_pd,
            nitro,
            trunking: nitro && !instance_type.starts_with('t'),
        }
    }

    fn seed(pending: u32, env: &[(&str, &str)], version: &str) -> Facts {
        Facts {
            cluster: "shop-prod".into(),
            pending: (0..pending)
                .map(|i| PendingPod {
                    namespace: "shop".into(),
                    name: format!("web-{i}"),
                    node: None,
                    cause: Cause::PodCountLimit,
                })
                .collect(),
            nodes: (0..3)
                .map(|i| node(i, "c5.xlarge", true, 58, 110, 58))
                .collect(),
            cni: CniFacts {
                owner: Owner::SelfManaged,
                version: Version::parse(version),
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            subnets: vec![SubnetFacts {
                id: "subnet-1".into(),
                available: 4000,
            }],
            cluster_role_arn: Some("arn:aws:iam::1:role/cluster".into()),
        }
    }

    #[test]
    fn the_seed_needs_prefix_delegation_and_projects_174_to_330_slots() {
        let d = decide(&seed(43, &[], "v1.18.3"), Settings::default());
        assert_eq!(d.steps.len(), 1);
        assert_eq!(d.steps[0].0, Step::EnablePrefixDelegation);
        let c = d.capacity.unwrap();
        assert_eq!(
            (c.before, c.after, c.pending, c.pending_after),
            (174, 330, 43, 0)
        );
        assert!(d.next_steps[0].contains("update-nodegroup-version"));
    }

    #[test]
    fn node_replacement_is_a_step_only_when_allowed() {
        let d = decide(
            &seed(43, &[], "v1.18.3"),
            Settings {
                allow_node_replacement: true,
                allow_pod_eni: false,
            },
        );
        assert_eq!(
            d.steps[1].0,
            Step::ReplaceNodes {
                node_groups: vec!["ng-1".into()]
            }
        );
    }

    #[test]
    fn an_old_cni_or_non_nitro_nodes_block_the_fix() {
        let d = decide(&seed(43, &[], "v1.8.0"), Settings::default());
        assert!(d.steps.is_empty());
        assert!(d.blockers[0].contains("older than v1.9.0"));

        let mut facts = seed(5, &[], "v1.18.3");
        facts.nodes = (0..2)
            .map(|i| node(i, "t2.medium", false, 17, 17, 17))
            .collect();
        let d = decide(&facts, Settings::default());
        assert!(d.steps.is_empty());
        assert!(d.blockers[0].contains("Nitro"));
    }

    #[test]
    fn prefix_delegation_already_on_with_old_nodes_asks_for_replacement_only() {
        let d = decide(
            &seed(43, &[("ENABLE_PREFIX_DELEGATION", "true")], "v1.18.3"),
            Settings::default(),
        );
        assert!(d.steps.is_empty());
        assert!(d.blockers.is_empty());
        assert!(
            d.next_steps
                .iter()
                .any(|s| s.contains("update-nodegroup-version"))
        );
    }

    #[test]
    fn groups_that_would_lose_capacity_are_not_replaced() {
        let mut facts = seed(10, &[], "v1.18.3");
        facts.nodes.push(NodeCapacity {
            node_group: Some("ng-big".into()),
            ..node(9, "c5.4xlarge", true, 234, 110, 234)
        });
        let d = decide(
            &facts,
            Settings {
                allow_node_replacement: true,
                allow_pod_eni: false,
            },
        );
        assert_eq!(
            d.steps[1].0,
            Step::ReplaceNodes {
                node_groups: vec!["ng-1".into()]
            }
        );
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("ng-big") && n.contains("234 -> 110"))
        );
        assert_eq!(d.capacity.unwrap().after, 330 + 234);
    }

    #[test]
    fn cpu_starved_pods_are_not_an_ip_problem() {
        let mut facts = seed(0, &[], "v1.18.3");
        facts.pending.push(PendingPod {
            namespace: "shop".into(),
            name: "big".into(),
            node: None,
            cause: Cause::Other("3 Insufficient cpu".into()),
        });
        let d = decide(&facts, Settings::default());
        assert!(d.steps.is_empty() && d.blockers.is_empty());
        assert_eq!(d.ip_related, 0);
        assert!(d.notes[0].contains("not IP problems"));
    }

    #[test]
    fn pod_eni_pods_enable_security_groups_for_pods_when_allowed() {
        let mut facts = seed(0, &[], "v1.18.3");
        facts.pending.push(PendingPod {
            namespace: "pay".into(),
            name: "p".into(),
            node: None,
            cause: Cause::PodEni,
        });
        let d = decide(&facts, Settings::default());
        assert!(d.steps.is_empty());
        assert!(d.next_steps[0].contains("ENABLE_POD_ENI"));
        let d = decide(
            &facts,
            Settings {
                allow_node_replacement: false,
                allow_pod_eni: true,
            },
        );
        let names: Vec<_> = d.steps.iter().map(|(s, _)| s.name()).collect();
        assert_eq!(names, ["enable-pod-eni", "attach-vpc-resource-controller"]);
    }
}
