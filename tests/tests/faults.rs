//! Fault tolerance: the node-interruption handler against an API server and an AWS endpoint
//! that throttle, fail, reset connections and answer late, as a cluster under load and a
//! flaky network do. Faults come from a seeded counter, so each run meets the same ones.
//!
//! Lambda retries an invocation that returns an error (twice for asynchronous invocations,
//! until the queue's receive count for SQS), so the tests invoke again on an error the way
//! Lambda would, and judge what the cluster, Auto Scaling and SNS show at the end.

use eks_remedy::invocation::Function;
use std::collections::BTreeSet;

use chrono::Utc;
use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::config::{Config, DeadlinePolicy};
use eks_remedy::interruption::{InvocationResult, NodeInterruption};
use eks_remedy::report::{Outcome, Report};
use eks_remedy_tests::ServerOptions;
use eks_remedy_tests::fault_proxy::{Exchange, Fault, FaultProxy, Faults, Upstream};
use eks_remedy_tests::world::*;
use serde_json::Value;

/// Invocations Lambda makes of one asynchronous event: the first and two retries.
const ATTEMPTS: usize = 3;

/// A world whose API server injects `faults`.
async fn faulty_world(cluster: &str, faults: Faults) -> World {
    let options = ServerOptions {
        faults: Some(faults),
        ..ServerOptions::default()
    };
    World::with_options(cluster, false, options).await
}

/// A proxy with `faults` in front of moto.
async fn faulty_aws(faults: Faults) -> FaultProxy {
    FaultProxy::start(&eks_remedy_tests::aws::endpoint(), Upstream::Aws, faults)
        .await
        .expect("fault proxy in front of moto")
}

/// The handler as the Lambda builds it, with its AWS calls going to `aws` (a proxy URL).
fn handler_through(world: &World, aws: &str, config: Config) -> NodeInterruption {
    let sdk = world.sdk.to_builder().endpoint_url(aws).build();
    let clients = AwsClients::new(sdk);
    NodeInterruption::new(clients.clone(), ClusterAccess::eks(clients), config)
}

/// Invokes `handler` with `event` until it succeeds or Lambda would give up; returns every
/// invocation's result (or error text).
async fn invoke_like_lambda(
    handler: &NodeInterruption,
    event: &Value,
) -> Vec<Result<InvocationResult, String>> {
    let mut results = Vec::new();
    for _ in 0..ATTEMPTS {
        match handler.handle(event, None).await {
            Ok(result) => {
                results.push(Ok(result));
                break;
            }
            Err(err) => {
                assert!(
                    err.retryable(),
                    "a fault on the wire is worth a retry: {err}"
                );
                results.push(Err(err.to_string()));
            }
        }
    }
    results
}

/// The last report of the last successful invocation.
fn final_report(results: &[Result<InvocationResult, String>]) -> Report {
    results
        .iter()
        .rev()
        .find_map(|r| r.as_ref().ok())
        .and_then(|r| r.reports.last().cloned())
        .unwrap_or_else(|| panic!("no invocation succeeded: {results:?}"))
}

/// The report that ended the drain: the one that lists what was evicted or blocked.
fn drain_report(results: &[Result<InvocationResult, String>]) -> Report {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|r| r.reports.iter())
        .rfind(|r| {
            matches!(
                r.outcome,
                Some(Outcome::Drained | Outcome::PartiallyDrained)
            )
        })
        .cloned()
        .unwrap_or_else(|| panic!("no report ended a drain: {results:?}"))
}

/// Pods deleted directly (not evicted): DELETE requests on pods that the client sent,
/// whether or not a fault stopped them.
fn pod_deletes(exchanges: &[Exchange]) -> Vec<String> {
    exchanges
        .iter()
        .filter(|e| e.method == "DELETE" && e.path.contains("/pods/"))
        .map(|e| e.path.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

/// A node with 40 web pods, a checkout pod whose budget never allows a disruption, and the
/// pods a drain leaves alone.
async fn busy_node(world: &World) -> TestNode {
    let node = world.node(None).await;
    for i in 0..40 {
        world
            .kube
            .create(pod("shop", &format!("web-{i:02}"), &node.name, "web"));
    }
    world
        .kube
        .create(pod("shop", "checkout-1", &node.name, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    world.kube.create(daemonset_pod("aws-node-x1", &node.name));
    world.kube.create(mirror_pod("static-web", &node.name));
    node
}

fn names(pods: &[String]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| p.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn under_ten_percent_faults_a_drain_moves_every_pod_or_reports_exactly_what_is_left() {
    let world = faulty_world("faults-drain", Faults::rate(10, 11)).await;
    let aws = faulty_aws(Faults::rate(10, 3)).await;
    let node = busy_node(&world).await;
    let handler = handler_through(&world, &aws.url(), world.config());
    // Issued 110 s ago: 10 s are left before the instance goes.
    let issued = Utc::now() - chrono::TimeDelta::seconds(110);

    let results =
        invoke_like_lambda(&handler, &spot_warning(&world, &node.instance_id, issued)).await;

    let end = drain_report(&results);
    assert_eq!(end.outcome, Some(Outcome::PartiallyDrained), "{end:#?}");
    let blocked: Vec<String> = end.blocked.iter().map(|b| b.pod.to_string()).collect();
    let checkout = end
        .blocked
        .iter()
        .find(|b| b.pod.name == "checkout-1")
        .expect("the pod its budget protects is reported");
    assert_eq!(checkout.pdb.as_deref(), Some("checkout-pdb"));

    // Every pod to move is accounted for exactly once.
    let mut accounted: Vec<String> = end
        .evicted
        .iter()
        .chain(&end.deleted)
        .chain(&blocked)
        .cloned()
        .collect();
    accounted.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("shop/web-{i:02}")).collect();
    expected.push("shop/checkout-1".into());
    expected.sort();
    assert_eq!(accounted, expected);

    // What is left on the node is what the report says is left.
    let left: BTreeSet<String> = world
        .pods_on(&node.name)
        .into_iter()
        .filter(|p| p != "aws-node-x1" && p != "static-web")
        .collect();
    let terminating: Vec<String> = end
        .notes
        .iter()
        .filter_map(|n| {
            n.strip_suffix(" was still terminating at the deadline")
                .map(str::to_owned)
        })
        .collect();
    let reported: BTreeSet<String> = names(&blocked)
        .union(&names(&terminating))
        .cloned()
        .collect();
    assert!(
        left.is_subset(&reported),
        "left {left:?}, reported {reported:?}"
    );
    assert!(
        names(&blocked).is_subset(&left),
        "blocked pods stay: {blocked:?}"
    );

    assert!(
        pod_deletes(&world.kube.exchanges()).is_empty(),
        "respect-pdb never deletes a pod"
    );
    assert!(
        world.kube.exchanges().iter().any(|e| e.fault.is_some()),
        "the API server's proxy injected faults"
    );
    assert!(aws.faults().total() > 0, "so did moto's");

    // The end of the drain reached SNS through the faulty endpoint as well.
    let published = world.published().await;
    let (message, attributes) = published.last().expect("the end report was published");
    assert_eq!(attributes["outcome"]["Value"], "partially-drained");
    assert!(
        message["content"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("checkout-pdb")
    );
}

#[tokio::test]
async fn under_faults_the_delete_policy_deletes_only_pods_a_budget_still_blocks() {
    let world = faulty_world("faults-delete", Faults::rate(10, 21)).await;
    let aws = faulty_aws(Faults::rate(10, 70)).await;
    let node = busy_node(&world).await;
    let config = Config {
        deadline_policy: DeadlinePolicy::DeleteWithRemainingGrace,
        ..world.config()
    };
    let handler = handler_through(&world, &aws.url(), config);
    // 6 s left: shorter than every pod's grace period, so the policy applies at once.
    let issued = Utc::now() - chrono::TimeDelta::seconds(114);

    let results =
        invoke_like_lambda(&handler, &spot_warning(&world, &node.instance_id, issued)).await;

    let deletes: BTreeSet<String> = pod_deletes(&world.kube.exchanges()).into_iter().collect();
    assert_eq!(
        deletes,
        BTreeSet::from(["checkout-1".to_owned()]),
        "only the pod its budget blocks is deleted"
    );
    let end = drain_report(&results);
    assert_eq!(end.deleted, ["shop/checkout-1"], "{end:#?}");
    // The others went through the eviction API, or are reported as left behind.
    let mut accounted: Vec<String> = end
        .evicted
        .iter()
        .cloned()
        .chain(end.blocked.iter().map(|b| b.pod.to_string()))
        .collect();
    accounted.sort();
    let expected: Vec<String> = (0..40).map(|i| format!("shop/web-{i:02}")).collect();
    assert_eq!(accounted, expected);
    assert!(aws.faults().total() > 0);
}

/// A throttled eviction (API Priority and Fairness) is not a PodDisruptionBudget's refusal: the
/// delete policy must not turn it into a DELETE that bypasses the eviction API.
#[tokio::test]
async fn a_throttled_eviction_near_the_deadline_is_retried_not_deleted() {
    let faults = Faults::always(Fault::Throttle)
        .matching("/pods/web-1/eviction")
        .at_most(1);
    let world = faulty_world("faults-throttle", faults).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let config = Config {
        deadline_policy: DeadlinePolicy::DeleteWithRemainingGrace,
        ..world.config()
    };
    let issued = Utc::now() - chrono::TimeDelta::seconds(110);

    let result = world
        .handler(config)
        .handle(&spot_warning(&world, &node.instance_id, issued), None)
        .await
        .expect("handled");

    let end = result.reports.last().expect("a report");
    let throttled = world
        .kube
        .exchanges()
        .iter()
        .filter(|e| e.fault == Some(Fault::Throttle))
        .count();
    assert_eq!(throttled, 1);
    assert!(pod_deletes(&world.kube.exchanges()).is_empty());
    assert_eq!(end.evicted, ["shop/web-1"]);
    assert_eq!(end.outcome, Some(Outcome::Drained));
}

#[tokio::test]
async fn a_lifecycle_hook_is_completed_under_faults_even_when_completing_it_fails_at_first() {
    let world = faulty_world("faults-hook", Faults::rate(10, 31)).await;
    // moto <- the first three CompleteLifecycleAction calls fail <- 10% of everything fails.
    let targeted = faulty_aws(
        Faults::always(Fault::Unavailable)
            .matching("Action=CompleteLifecycleAction")
            .at_most(3),
    )
    .await;
    let aws = FaultProxy::start(&targeted.url(), Upstream::Aws, Faults::rate(10, 32))
        .await
        .expect("fault proxy");
    let (group, hook, instance) = world.auto_scaling_group("ng-faults", 300).await;
    let name = "ip-10-0-9-9.ec2.internal";
    world
        .kube
        .create(node_object(name, &instance, "us-east-1a"));
    for i in 0..10 {
        world
            .kube
            .create(pod("shop", &format!("web-{i}"), name, "web"));
    }
    let handler = handler_through(&world, &aws.url(), world.config());

    let results = invoke_like_lambda(
        &handler,
        &lifecycle_action(&world, &group, &hook, &instance, Utc::now()),
    )
    .await;

    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed",
        "{results:#?}"
    );
    assert!(world.pods_on(name).is_empty());
    let first = results[0]
        .as_ref()
        .expect_err("the SDK's own retries ran out");
    assert!(first.contains("CompleteLifecycleAction"), "{first}");
    assert_eq!(targeted.faults().total(), 3);

    // The action was completed only after the last pod was evicted.
    let evicted_at = world
        .kube
        .exchanges()
        .iter()
        .filter(|e| e.path.ends_with("/eviction") && e.succeeded())
        .map(|e| e.seq)
        .max()
        .expect("evictions");
    let completed_at = targeted
        .exchanges()
        .iter()
        .filter(|e| e.aws_action() == "CompleteLifecycleAction" && e.succeeded())
        .map(|e| e.seq)
        .min()
        .expect("a completed action");
    assert!(completed_at > evicted_at);

    // The drain's end is reported by the invocation that drained, though completing the
    // action failed there; the retry only completes it, in the same thread.
    let published = world.published().await;
    let outcomes: Vec<&str> = published
        .iter()
        .map(|(_, a)| a["outcome"]["Value"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["started", "failed", "skipped"]);
    let drained = published[1].0["content"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(drained.contains("*Evicted (10):*"), "{drained}");
    assert!(drained.contains("the event will be retried"), "{drained}");
    let threads: BTreeSet<String> = published
        .iter()
        .map(|(m, _)| m["metadata"]["threadId"].to_string())
        .collect();
    assert_eq!(threads.len(), 1);
    let end = final_report(&results);
    assert_eq!(end.outcome, Some(Outcome::Skipped), "{end:#?}");
    assert!(
        end.steps
            .iter()
            .any(|s| s.step.action.name() == "complete-lifecycle-action" && s.result == "done")
    );
}

/// The claim's write reaches the API server but its answer is lost: the invocation must still
/// recognise the incident as its own and drain, not mistake its own record for a repeat.
#[tokio::test]
async fn a_claim_whose_answer_is_lost_still_drains_the_node() {
    let faults = Faults::always(Fault::LostResponse)
        .matching("eks-remedy.io~1incident")
        .at_most(1);
    let world = faulty_world("faults-claim", faults).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let event = spot_warning(&world, &node.instance_id, Utc::now());

    let results = invoke_like_lambda(&world.handler(world.config()), &event).await;

    assert_eq!(
        world
            .kube
            .exchanges()
            .iter()
            .filter(|e| e.fault.is_some())
            .count(),
        1
    );
    let end = final_report(&results);
    assert_eq!(end.outcome, Some(Outcome::Drained), "{end:#?}");
    assert!(world.pods_on(&node.name).is_empty());
    assert_eq!(
        world.node_state(&node.name).expect("node")["spec"]["unschedulable"],
        true
    );
}
