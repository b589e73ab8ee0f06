//! End to end: Pending pods diagnosed and fixed by the pending-pods handler, against moto (EKS
//! add-ons, node groups, EC2 instance types, SNS) and the Kubernetes test API server.

use chrono::Utc;
use eks_remedy::invocation::Function;
use eks_remedy::report::Outcome;
use eks_remedy_tests::world::*;
use serde_json::{Value, json};

/// The seed: 3 c5.xlarge nodes at 58 pods each (17 system pods, 157 of 200 app replicas
/// running) and 43 replicas Pending with "Too many pods".
async fn seed(world: &World) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(world.typed_node("c5.xlarge", 58, "ng-1").await);
    }
    let mut placed = 0;
    for (i, node) in nodes.iter().enumerate() {
        let system = if i < 2 { 6 } else { 5 };
        for s in 0..system {
            world.kube.create(pod(
                "kube-system",
                &format!("system-{i}-{s}"),
                &node.name,
                "system",
            ));
        }
        for _ in 0..(58 - system) {
            world
                .kube
                .create(pod("shop", &format!("web-{placed:03}"), &node.name, "web"));
            placed += 1;
        }
    }
    assert_eq!(placed, 157);
    for p in placed..200 {
        let name = format!("web-{p:03}");
        world.kube.create(pending_pod("shop", &name, "web"));
        world.kube.create(pod_event(
            "shop",
            &name,
            "FailedScheduling",
            TOO_MANY_PODS,
            1,
        ));
    }
    nodes
}

fn fact<'a>(report: &'a eks_remedy::report::Report, name: &str) -> &'a str {
    report
        .facts
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no fact {name}: {:?}", report.facts))
}

fn incident_annotation(world: &World) -> Option<String> {
    world
        .kube
        .get("apps/v1", "DaemonSet", Some("kube-system"), "aws-node")
        .and_then(|ds| {
            ds["metadata"]["annotations"]["eks-remedy.io/pending-pods-incident"]
                .as_str()
                .map(str::to_owned)
        })
}

#[tokio::test]
async fn seed_scenario_enables_prefix_delegation_on_the_managed_addon_and_threads_repeats() {
    let world = World::new("pending-seed", false).await;
    seed(&world).await;
    world
        .vpc_cni_addon(
            "v1.18.3-eksbuild.1",
            Some(r#"{"env":{"WARM_ENI_TARGET":"1"},"nodeAgent":{"enablePolicyEventLogs":"true"}}"#),
        )
        .await;
    world.kube.create(aws_node_daemonset(
        "v1.18.3-eksbuild.1",
        &[("WARM_ENI_TARGET", "1")],
    ));
    let handler = world.pending_handler(world.config());
    let fired = Utc::now();

    let result = handler
        .handle(&pending_alarm(&world, "ALARM", "OK", fired), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert_eq!(report.outcome, Some(Outcome::Remediated), "{report:#?}");
    assert_eq!(
        fact(report, "Pod capacity"),
        "174 -> 330 slots on 3 nodes (174 used)"
    );
    assert_eq!(fact(report, "Pending (IP limits)"), "43 -> 0 projected");
    assert!(fact(report, "Pending pods").contains("43 pod-count limit"));
    let config: Value =
        serde_json::from_str(&world.vpc_cni_configuration().await.unwrap()).unwrap();
    assert_eq!(config["env"]["ENABLE_PREFIX_DELEGATION"], "true");
    assert_eq!(config["env"]["WARM_PREFIX_TARGET"], "1");
    assert_eq!(
        config["env"]["WARM_ENI_TARGET"], "1",
        "existing values are kept"
    );
    assert_eq!(config["nodeAgent"]["enablePolicyEventLogs"], "true");
    assert!(
        report
            .next_steps
            .iter()
            .any(|s| s.contains("update-nodegroup-version") && s.contains("ng-1"))
    );
    let (message, attributes) = world.published().await.pop().unwrap();
    assert_eq!(attributes["outcome"]["Value"], "remediated");
    assert_eq!(attributes["kind"]["Value"], "pending-pods");
    let description = message["content"]["description"].as_str().unwrap();
    assert!(description.contains("174 -> 330"), "{description}");
    let thread = message["metadata"]["threadId"].as_str().unwrap().to_owned();
    assert!(incident_annotation(&world).unwrap().contains(&thread));

    // The alarm fires again while nodes are being replaced: nothing new, same thread.
    let again = handler
        .handle(&pending_alarm(&world, "ALARM", "OK", Utc::now()), None)
        .await
        .unwrap();
    assert_eq!(again.reports[0].outcome, Some(Outcome::Skipped));
    assert_eq!(
        world.updates(None, Some("vpc-cni")).await.len(),
        1,
        "one UpdateAddon only"
    );
    let (message, _) = world.published().await.pop().unwrap();
    assert_eq!(message["metadata"]["threadId"], thread.as_str());

    // The pods get placed and the alarm returns to OK: resolved, incident closed, same thread.
    for p in 157..200 {
        world
            .kube
            .remove("v1", "Pod", Some("shop"), &format!("web-{p:03}"));
    }
    let ok = handler
        .handle(&pending_alarm(&world, "OK", "ALARM", fired), None)
        .await
        .unwrap();
    assert_eq!(ok.reports[0].outcome, Some(Outcome::Resolved));
    assert!(
        ok.reports[0].summary.contains("All 43"),
        "{}",
        ok.reports[0].summary
    );
    let (message, _) = world.published().await.pop().unwrap();
    assert_eq!(message["metadata"]["threadId"], thread.as_str());
    assert_eq!(incident_annotation(&world), None);
}

#[tokio::test]
async fn self_managed_aws_node_keeps_its_other_container_and_env() {
    let world = World::new("pending-self-managed", false).await;
    seed(&world).await;
    world.kube.create(aws_node_daemonset(
        "v1.16.4",
        &[
            ("WARM_ENI_TARGET", "1"),
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG"),
        ],
    ));

    let result = world
        .pending_handler(world.config())
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    assert_eq!(result.reports[0].outcome, Some(Outcome::Remediated));
    let ds = world
        .kube
        .get("apps/v1", "DaemonSet", Some("kube-system"), "aws-node")
        .unwrap();
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aws-node", "aws-eks-nodeagent"]);
    let env: Vec<(String, String)> = containers[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (k, v) in [
        ("WARM_ENI_TARGET", "1"),
        ("AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG"),
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_PREFIX_TARGET", "1"),
    ] {
        assert!(
            env.contains(&(k.to_owned(), v.to_owned())),
            "{k} in {env:?}"
        );
    }
    let patches: Vec<_> = world
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/daemonsets/aws-node"))
        .collect();
    assert!(!patches.is_empty());
}

#[tokio::test]
async fn non_nitro_nodes_and_cpu_starved_pods_are_reported_not_fixed() {
    let world = World::new("pending-xen", false).await;
    let a = world.typed_node("t2.medium", 17, "ng-old").await;
    world.typed_node("t2.medium", 17, "ng-old").await;
    for i in 0..17 {
        world
            .kube
            .create(pod("shop", &format!("api-{i}"), &a.name, "api"));
    }
    world.kube.create(pending_pod("shop", "api-17", "api"));
    world.kube.create(pod_event(
        "shop",
        "api-17",
        "FailedScheduling",
        "0/2 nodes are available: 2 Too many pods.",
        1,
    ));
    world.kube.create(pending_pod("shop", "batch-1", "batch"));
    world.kube.create(pod_event("shop", "batch-1", "FailedScheduling", "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.", 1));
    world.kube.create(aws_node_daemonset("v1.18.3", &[]));
    let before = world
        .kube
        .get("apps/v1", "DaemonSet", Some("kube-system"), "aws-node")
        .unwrap();

    let result = world
        .pending_handler(world.config())
        .handle(&pending_alarm(&world, "ALARM", "OK", Utc::now()), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert_eq!(report.outcome, Some(Outcome::NeedsAttention));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("Nitro") && n.contains("t2.medium")),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("not IP problems") && n.contains("Insufficient cpu"))
    );
    let after = world
        .kube
        .get("apps/v1", "DaemonSet", Some("kube-system"), "aws-node")
        .unwrap();
    assert_eq!(before["spec"], after["spec"], "nothing changed");
    assert_eq!(
        world.published().await[0].1["outcome"]["Value"],
        "needs-attention"
    );
}

#[tokio::test]
async fn node_replacement_starts_once_when_configured() {
    let world = World::new("pending-replace", false).await;
    seed(&world).await;
    world.node_group("ng-1").await;
    world.vpc_cni_addon("v1.18.3-eksbuild.1", None).await;
    world
        .kube
        .create(aws_node_daemonset("v1.18.3-eksbuild.1", &[]));
    let config = eks_remedy::config::Config {
        allow_node_replacement: true,
        ..world.config()
    };
    let handler = world.pending_handler(config);

    let first = handler
        .handle(&pending_alarm(&world, "ALARM", "OK", Utc::now()), None)
        .await
        .unwrap();
    let second = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let steps: Vec<&str> = first.reports[0]
        .steps
        .iter()
        .map(|s| s.step.action.name())
        .collect();
    assert_eq!(steps, ["enable-prefix-delegation", "replace-nodes"]);
    assert_eq!(second.reports[0].outcome, Some(Outcome::Skipped));
    assert_eq!(
        world.updates(Some("ng-1"), None).await.len(),
        1,
        "one rolling update"
    );
}

#[tokio::test]
async fn dry_run_reports_the_fix_and_changes_nothing() {
    let world = World::new("pending-dry", false).await;
    seed(&world).await;
    world
        .vpc_cni_addon(
            "v1.18.3-eksbuild.1",
            Some(r#"{"env":{"WARM_ENI_TARGET":"1"}}"#),
        )
        .await;
    world
        .kube
        .create(aws_node_daemonset("v1.18.3-eksbuild.1", &[]));
    let config = eks_remedy::config::Config {
        dry_run: true,
        ..world.config()
    };

    let result = world
        .pending_handler(config)
        .handle(&pending_alarm(&world, "ALARM", "OK", Utc::now()), None)
        .await
        .unwrap();

    assert!(result.reports[0].summary.starts_with("Dry run"));
    assert_eq!(
        world.vpc_cni_configuration().await.as_deref(),
        Some(r#"{"env":{"WARM_ENI_TARGET":"1"}}"#)
    );
    assert!(world.kube.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn alarms_without_a_cluster_or_for_clusters_not_allowed_change_nothing() {
    let world = World::new("pending-guard", false).await;
    let mut alarm = pending_alarm(&world, "ALARM", "OK", Utc::now());
    alarm["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"]["dimensions"] =
        json!({});
    let handler = world.pending_handler(world.config());

    let result = handler.handle(&alarm, None).await.unwrap();
    assert!(
        result.rejected[0].contains("names no cluster"),
        "{:?}",
        result.rejected
    );

    let other = eks_remedy::config::Config {
        clusters: eks_remedy::config::ClusterAllowList::parse("someone-else"),
        ..world.config()
    };
    let result = world
        .pending_handler(other)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(result.reports[0].outcome, Some(Outcome::Ignored));
    assert!(world.kube.requests().is_empty());
}

#[tokio::test]
async fn pods_waiting_for_a_branch_eni_turn_on_security_groups_for_pods_when_allowed() {
    let world = World::new("pending-sgp", false).await;
    world.typed_node("c5.xlarge", 58, "ng-1").await;
    world.kube.create(pending_pod("payments", "api-0", "api"));
    world.kube.create(pod_event("payments", "api-0", "FailedScheduling",
        "0/1 nodes are available: 1 Insufficient vpc.amazonaws.com/pod-eni. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.", 1));
    world.kube.create(aws_node_daemonset("v1.18.3", &[]));
    let iam = aws_sdk_iam::Client::new(&world.sdk);
    iam.create_role().role_name("eks-cluster").assume_role_policy_document(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"eks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
    ).send().await.unwrap();

    let not_allowed = world
        .pending_handler(world.config())
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(
        not_allowed.reports[0].outcome,
        Some(Outcome::NeedsAttention)
    );
    assert!(
        not_allowed.reports[0]
            .next_steps
            .iter()
            .any(|s| s.contains("ENABLE_POD_ENI"))
    );

    let config = eks_remedy::config::Config {
        allow_pod_eni: true,
        ..world.config()
    };
    let result = world
        .pending_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    let steps: Vec<&str> = report.steps.iter().map(|s| s.step.action.name()).collect();
    assert_eq!(
        steps,
        ["enable-pod-eni", "attach-vpc-resource-controller"],
        "{report:#?}"
    );
    assert!(report.steps[0].step.reason.contains("trunk"));
    let ds = world
        .kube
        .get("apps/v1", "DaemonSet", Some("kube-system"), "aws-node")
        .unwrap();
    let env = ds["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("ENABLE_POD_ENI"), "{env}");
    let attached = iam
        .list_attached_role_policies()
        .role_name("eks-cluster")
        .send()
        .await
        .unwrap();
    assert!(
        attached
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn()
                == Some("arn:aws:iam::aws:policy/AmazonEKSVPCResourceController"))
    );
}
