//! Duplicates and races: the events of one interruption (and repeated alarms) handled by
//! concurrent invocations, as EventBridge, SQS redelivery and Lambda's scaling produce them.
//! Whatever the interleaving, there is one incident, each action is taken once, and every
//! notification lands in one thread.
//!
//! Both the API server and moto sit behind recording proxies (no faults), so the tests count
//! what the handlers sent by kind: cordons, taints, incident records, evictions, lifecycle
//! completions.

use eks_remedy::invocation::Function;
use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::incident::{ANNOTATION, Incident};
use eks_remedy::interruption::NodeInterruption;
use eks_remedy::report::Outcome;
use eks_remedy_tests::ServerOptions;
use eks_remedy_tests::fault_proxy::{Exchange, FaultProxy, Faults, Upstream};
use eks_remedy_tests::world::*;
use serde_json::Value;

/// A world whose API server records every request with its body.
async fn recorded_world(cluster: &str) -> World {
    let options = ServerOptions {
        faults: Some(Faults::none()),
        ..ServerOptions::default()
    };
    World::with_options(cluster, false, options).await
}

/// A recording proxy in front of moto.
async fn recorded_aws() -> FaultProxy {
    FaultProxy::start(
        &eks_remedy_tests::aws::endpoint(),
        Upstream::Aws,
        Faults::none(),
    )
    .await
    .expect("recording proxy in front of moto")
}

/// One handler per invocation, as separate Lambda execution environments have, each reaching
/// AWS through `aws`.
fn handlers(world: &World, aws: &FaultProxy, n: usize) -> Vec<NodeInterruption> {
    (0..n)
        .map(|_| {
            let sdk = world.sdk.to_builder().endpoint_url(aws.url()).build();
            let clients = AwsClients::new(sdk);
            NodeInterruption::new(clients.clone(), ClusterAccess::eks(clients), world.config())
        })
        .collect()
}

/// What a request to the API server did, judged by its body.
fn action_of(e: &Exchange) -> Option<&'static str> {
    match e.method.as_str() {
        "PATCH" if e.body.contains("eks-remedy.io~1incident") => Some("incident"),
        "PATCH" if e.body.contains("\"unschedulable\":true") => Some("cordon"),
        "PATCH" if e.body.contains("node.kubernetes.io/out-of-service") => {
            Some("taint-out-of-service")
        }
        "PATCH" if e.body.contains("eks-remedy.io/interruption") => Some("taint-interruption"),
        "POST" if e.path.ends_with("/eviction") => Some("evict"),
        "DELETE" => Some("delete"),
        _ => None,
    }
}

/// Successful changes by kind (evictions by pod).
fn changes(exchanges: &[Exchange]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in exchanges.iter().filter(|e| e.succeeded()) {
        let Some(action) = action_of(e) else {
            continue;
        };
        let key = if action == "evict" {
            let pod = e.path.trim_end_matches("/eviction");
            format!("evict {}", pod.rsplit('/').next().unwrap_or_default())
        } else {
            action.to_owned()
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn incident_on(world: &World, node: &str) -> Incident {
    let state = world.node_state(node).expect("the node");
    let text = state["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .expect("an incident record");
    serde_json::from_str(text).expect("the record parses")
}

fn threads(published: &[(Value, Value)]) -> BTreeSet<String> {
    published
        .iter()
        .map(|(m, _)| m["metadata"]["threadId"].to_string())
        .collect()
}

/// An Auto Scaling instance of the cluster with its node and `pods` web pods.
async fn asg_node(world: &World, pods: usize) -> (String, String, String, String) {
    let (group, hook, instance) = world.auto_scaling_group("ng-race", 300).await;
    let name = "ip-10-0-3-3.ec2.internal".to_owned();
    world
        .kube
        .create(node_object(&name, &instance, "us-east-1a"));
    for i in 0..pods {
        world
            .kube
            .create(pod("shop", &format!("web-{i}"), &name, "web"));
    }
    (group, hook, instance, name)
}

#[tokio::test]
async fn warning_rebalance_hook_and_termination_twice_each_at_once_are_one_incident_acted_on_once()
{
    let world = recorded_world("race-all").await;
    let aws = recorded_aws().await;
    let (group, hook, instance, node) = asg_node(&world, 8).await;
    let now = Utc::now();
    // Each event twice, as at-least-once delivery allows.
    let events = [
        rebalance(&world, &instance, now),
        spot_warning(&world, &instance, now),
        lifecycle_action(&world, &group, &hook, &instance, now),
        state_change(&world, &instance, "shutting-down", now),
    ]
    .map(|e| [e.clone(), e])
    .concat();
    let handlers = handlers(&world, &aws, events.len());

    let results = futures::future::join_all(
        handlers
            .iter()
            .zip(&events)
            .map(|(h, event)| h.handle(event, None)),
    )
    .await;

    for result in &results {
        let result = result.as_ref().expect("handled");
        assert!(result.errors.is_empty(), "{:?}", result.errors);
    }
    let incident = incident_on(&world, &node);
    let kinds: Vec<&str> = incident.events.iter().map(|e| e.kind.as_str()).collect();
    let distinct: BTreeSet<&str> = kinds.iter().copied().collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(distinct.len(), 4, "each kind recorded once: {kinds:?}");
    for result in results.iter().flatten() {
        for report in &result.reports {
            assert_eq!(report.incident_id, incident.id, "one incident");
        }
    }

    let changes = changes(&world.kube.exchanges());
    assert!(
        changes.get("cordon").copied().unwrap_or(0) <= 1,
        "{changes:?}"
    );
    assert!(
        changes.get("taint-interruption").copied().unwrap_or(0) <= 1,
        "{changes:?}"
    );
    assert_eq!(changes.get("taint-out-of-service"), Some(&1), "{changes:?}");
    assert_eq!(changes.get("delete"), None, "{changes:?}");
    assert!(
        changes
            .iter()
            .filter(|(k, _)| k.starts_with("evict "))
            .all(|(_, n)| *n == 1),
        "no pod evicted twice: {changes:?}"
    );
    // The four kinds' claims and at most one drain outcome.
    assert!(
        changes.get("incident").copied().unwrap_or(0) <= 5,
        "{changes:?}"
    );

    let completions: Vec<Exchange> = aws
        .exchanges()
        .into_iter()
        .filter(|e| e.aws_action() == "CompleteLifecycleAction")
        .collect();
    assert_eq!(
        completions.iter().filter(|e| e.succeeded()).count(),
        1,
        "the lifecycle action completed once"
    );
    assert!(
        completions.len() <= 2,
        "once per delivery of the hook at most"
    );
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );

    let published = world.published().await;
    assert_eq!(threads(&published).len(), 1, "one notification thread");
    let started = published
        .iter()
        .filter(|(_, a)| a["outcome"]["Value"] == "started")
        .count();
    assert!(started <= 1);
}

/// SQS redelivers a message whose visibility timeout ends before a long drain does; the copy
/// must not complete the lifecycle action while the first invocation is still draining.
#[tokio::test]
async fn a_redelivered_hook_waits_for_the_running_drain_before_completing_the_action() {
    let world = recorded_world("race-hook").await;
    let aws = recorded_aws().await;
    let (group, hook, instance, node) = asg_node(&world, 3).await;
    world
        .kube
        .create(pod("shop", "checkout-1", &node, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    let event = lifecycle_action(&world, &group, &hook, &instance, Utc::now());
    let handlers = handlers(&world, &aws, 2);

    let first = handlers[0].handle(&event, None);
    let copy = async {
        // The copy arrives once the first invocation has claimed the incident.
        while world
            .kube
            .exchanges()
            .iter()
            .all(|e| action_of(e) != Some("incident"))
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        handlers[1].handle(&event, None).await
    };
    let relax = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        world.kube.remove(
            "policy/v1",
            "PodDisruptionBudget",
            Some("shop"),
            "checkout-pdb",
        );
    };
    let (first, copy, ()) = tokio::join!(first, copy, relax);

    let first = first.expect("handled");
    let copy = copy.expect("handled");
    assert_eq!(
        first.reports.last().and_then(|r| r.outcome),
        Some(Outcome::Drained)
    );
    assert!(world.pods_on(&node).is_empty());
    assert_eq!(copy.reports.len(), 1, "{:#?}", copy.reports);

    // No completion reached Auto Scaling before the pod the budget held had been evicted.
    let held_until = world
        .kube
        .exchanges()
        .iter()
        .filter(|e| e.succeeded() && e.path.ends_with("/pods/checkout-1/eviction"))
        .map(|e| e.seq)
        .min()
        .expect("checkout-1 was evicted once its budget went");
    let completions: Vec<Exchange> = aws
        .exchanges()
        .into_iter()
        .filter(|e| e.aws_action() == "CompleteLifecycleAction")
        .collect();
    assert!(
        completions.iter().all(|e| e.seq > held_until),
        "the action was completed while pods were still draining"
    );
    assert_eq!(
        completions.iter().filter(|e| e.succeeded()).count(),
        1,
        "completed once"
    );
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
    assert_eq!(threads(&world.published().await).len(), 1);
}

/// The seed scenario of the pending-pods function in small: one c5.xlarge at its 58 pods and
/// replicas Pending with "Too many pods".
async fn full_node(world: &World) {
    let node = world.typed_node("c5.xlarge", 58, "ng-1").await;
    for i in 0..58 {
        world
            .kube
            .create(pod("shop", &format!("web-{i:02}"), &node.name, "web"));
    }
    for i in 58..70 {
        let name = format!("web-{i:02}");
        world.kube.create(pending_pod("shop", &name, "web"));
        world.kube.create(pod_event(
            "shop",
            &name,
            "FailedScheduling",
            "0/1 nodes are available: 1 Too many pods.",
            1,
        ));
    }
}

#[tokio::test]
async fn a_second_alarm_during_the_prefix_delegation_rollout_makes_no_second_update() {
    let world = recorded_world("race-pending").await;
    full_node(&world).await;
    world.vpc_cni_addon("v1.18.3-eksbuild.1", None).await;
    world
        .kube
        .create(aws_node_daemonset("v1.18.3-eksbuild.1", &[]));
    let first = world.pending_handler(world.config());
    let second = world.pending_handler(world.config());
    let fired = Utc::now();
    let alarm = pending_alarm(&world, "ALARM", "OK", fired);
    let again = pending_alarm(&world, "ALARM", "OK", fired);

    let (a, b) = tokio::join!(first.handle(&alarm, None), second.handle(&again, None));

    let outcomes: Vec<Option<Outcome>> = [a, b]
        .iter()
        .map(|r| r.as_ref().expect("handled").reports[0].outcome)
        .collect();
    assert_eq!(
        world.updates(None, Some("vpc-cni")).await.len(),
        1,
        "one UpdateAddon; outcomes {outcomes:?}"
    );
    assert!(outcomes.contains(&Some(Outcome::Remediated)));
    let published = world.published().await;
    assert_eq!(threads(&published).len(), 1, "one notification thread");
}

/// Once the instance is gone there is no drain to wait for: a repeated hook completes the
/// action at once instead of waiting out the drain deadline for a drain that never started.
#[tokio::test]
async fn a_repeated_hook_after_the_instance_is_gone_does_not_wait_for_a_drain() {
    let world = recorded_world("race-gone").await;
    let aws = recorded_aws().await;
    let (group, hook, instance, _node) = asg_node(&world, 2).await;
    let now = Utc::now();
    let mut handler = handlers(&world, &aws, 1).remove(0);
    // Short, so that a wait for a drain that never comes ends within the test.
    handler.config.max_drain = std::time::Duration::from_secs(3);
    let event = lifecycle_action(&world, &group, &hook, &instance, now);

    handler
        .handle(&state_change(&world, &instance, "terminated", now), None)
        .await
        .expect("handled");
    handler.handle(&event, None).await.expect("handled");
    let repeat = handler.handle(&event, None).await.expect("handled");

    let steps: Vec<(String, String)> = repeat
        .reports
        .iter()
        .flat_map(|r| &r.steps)
        .map(|s| (s.step.action.name().to_owned(), s.result.clone()))
        .collect();
    assert!(
        steps
            .iter()
            .all(|(action, result)| action != "await-drain" || !result.contains("deadline")),
        "{steps:?}"
    );
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
}
