//! End to end: AWS documentation events through the node-interruption handler, against moto
//! (EC2, EKS, Auto Scaling, SNS, SQS) and the Kubernetes test API server, over HTTP.

use chrono::Utc;
use eks_remedy::incident::ANNOTATION;
use eks_remedy::invocation::Function;
use eks_remedy::report::Outcome;
use eks_remedy_tests::world::*;
use serde_json::{Value, json};

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["key"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn outcomes(result: &eks_remedy::interruption::InvocationResult) -> Vec<Option<Outcome>> {
    result.reports.iter().map(|r| r.outcome).collect()
}

#[tokio::test]
async fn spot_warning_cordons_taints_and_drains_the_node_then_reports_to_sns() {
    let world = World::new("shop-prod", false).await;
    let node = world.node(Some("ip-10-0-1-11.ec2.internal")).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    world.kube.create(pod("shop", "web-2", &node.name, "web"));
    world.kube.create(daemonset_pod("aws-node-x1", &node.name));
    world.kube.create(mirror_pod("static-web", &node.name));
    let other = world.node(None).await;
    world.kube.create(pod("shop", "web-3", &other.name, "web"));

    let handler = world.handler(world.config());
    let result = handler
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .expect("handled");

    assert_eq!(
        outcomes(&result),
        [Some(Outcome::Started), Some(Outcome::Drained)]
    );
    let state = world.node_state(&node.name).unwrap();
    assert_eq!(state["spec"]["unschedulable"], json!(true));
    assert_eq!(taint_keys(&state), ["eks-remedy.io/interruption"]);
    assert_eq!(world.pods_on(&node.name), ["aws-node-x1", "static-web"]);
    assert_eq!(world.pods_on(&other.name), ["web-3"]);
    let incident = state["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .unwrap();
    assert!(incident.contains(&node.instance_id));

    let published = world.published().await;
    assert_eq!(published.len(), 2, "a start and an end report");
    let (end, attributes) = &published[1];
    assert_eq!(end["version"], "1.0");
    assert_eq!(end["source"], "custom");
    assert_eq!(
        end["metadata"]["threadId"],
        published[0].0["metadata"]["threadId"]
    );
    assert!(
        end["content"]["title"]
            .as_str()
            .unwrap()
            .contains("drained")
    );
    assert!(
        end["content"]["description"]
            .as_str()
            .unwrap()
            .contains("shop/web-1")
    );
    assert_eq!(attributes["outcome"]["Value"], "drained");
    assert_eq!(attributes["cluster"]["Value"], "shop-prod");
    assert_eq!(attributes["kind"]["Value"], "spot-interruption");
    let start = &published[0].0;
    let description = start["content"]["description"].as_str().unwrap();
    assert!(description.contains("c5.xlarge") && description.contains("us-east-1a"));
    assert!(description.contains("Pods to move (2)"));
}

fn mutations(world: &World) -> Vec<String> {
    world
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn rebalance_recommendation_cordons_only_by_default() {
    let world = World::new("rebalance", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));

    let result = world
        .handler(world.config())
        .handle(&rebalance(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result), [Some(Outcome::Cordoned)]);
    let state = world.node_state(&node.name).unwrap();
    assert_eq!(state["spec"]["unschedulable"], json!(true));
    assert!(
        taint_keys(&state).is_empty(),
        "no interruption taint for a recommendation"
    );
    assert_eq!(world.pods_on(&node.name), ["web-1"]);
    let published = world.published().await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].1["outcome"]["Value"], "cordoned");
}

#[tokio::test]
async fn rebalance_recommendation_drains_when_configured() {
    let world = World::new("rebalance-drain", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let config = eks_remedy::config::Config {
        drain_on_rebalance: true,
        ..world.config()
    };

    let result = world
        .handler(config)
        .handle(&rebalance(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result).last(), Some(&Some(Outcome::Drained)));
    assert!(world.pods_on(&node.name).is_empty());
}

#[tokio::test]
async fn stopping_instance_is_drained_and_a_terminated_one_gets_the_out_of_service_taint() {
    let world = World::new("states", false).await;
    let stopping = world.node(None).await;
    let terminated = world.node(None).await;
    world.kube.create(pod("shop", "a-1", &stopping.name, "a"));
    world.kube.create(pod("shop", "b-1", &terminated.name, "b"));
    let handler = world.handler(world.config());

    let result = handler
        .handle(
            &state_change(&world, &stopping.instance_id, "stopping", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&result).last(), Some(&Some(Outcome::Drained)));
    assert!(world.pods_on(&stopping.name).is_empty());

    let result = handler
        .handle(
            &state_change(&world, &terminated.instance_id, "terminated", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&result), [Some(Outcome::OutOfService)]);
    let state = world.node_state(&terminated.name).unwrap();
    let taint = state["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "node.kubernetes.io/out-of-service")
        .cloned()
        .expect("out-of-service taint");
    assert_eq!(taint["value"], "nodeshutdown");
    assert_eq!(taint["effect"], "NoExecute");

    let result = handler
        .handle(
            &state_change(&world, &terminated.instance_id, "pending", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes(&result),
        [Some(Outcome::Ignored)],
        "pending needs no action"
    );
}

#[tokio::test]
async fn lifecycle_hook_drains_then_completes_the_action() {
    let world = World::new("hooks", false).await;
    let (group, hook, instance) = world.auto_scaling_group("ng-spot-asg", 300).await;
    let name = "ip-10-0-7-7.ec2.internal";
    world
        .kube
        .create(node_object(name, &instance, "us-east-1a"));
    world.kube.create(pod("shop", "web-1", name, "web"));

    let event = lifecycle_action(&world, &group, &hook, &instance, Utc::now());
    let result = world
        .handler(world.config())
        .handle(&event, None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result).last(), Some(&Some(Outcome::Drained)));
    assert!(world.pods_on(name).is_empty());
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
    let end = result.reports.last().unwrap();
    assert!(
        end.steps
            .iter()
            .any(|s| s.step.action.name() == "complete-lifecycle-action" && s.result == "done")
    );

    // A second delivery finds the action already completed and changes nothing.
    let again = world
        .handler(world.config())
        .handle(&event, None)
        .await
        .unwrap();
    assert_eq!(outcomes(&again), [Some(Outcome::Skipped)]);
    assert!(again.errors.is_empty());
}

#[tokio::test]
async fn lifecycle_hook_for_an_instance_without_a_node_is_still_completed() {
    let world = World::new("hooks-no-node", false).await;
    let (group, hook, instance) = world.auto_scaling_group("ng-empty", 300).await;

    let event = lifecycle_action(&world, &group, &hook, &instance, Utc::now());
    let result = world
        .handler(world.config())
        .handle(&event, None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result), [Some(Outcome::Skipped)]);
    assert!(result.reports[0].summary.contains("not a cluster node"));
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
    assert_eq!(world.published().await.len(), 1);
}

#[tokio::test]
async fn health_scheduled_change_drains_before_its_start_time() {
    let world = World::new("health", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let start = Utc::now() + chrono::TimeDelta::hours(2);

    let result = world
        .handler(world.config())
        .handle(&health_change(&world, &node.instance_id, start), None)
        .await
        .unwrap();

    assert_eq!(
        outcomes(&result),
        [Some(Outcome::Started), Some(Outcome::Drained)]
    );
    assert!(world.pods_on(&node.name).is_empty());
    assert_eq!(result.reports[1].kind, "health-scheduled-change");
}

#[tokio::test]
async fn node_named_by_instance_id_is_found_through_its_provider_id() {
    let world = World::new("instance-names", false).await;
    let node = world.node(None).await;
    assert_eq!(node.name, node.instance_id);
    world.kube.create(pod("shop", "web-1", &node.name, "web"));

    let result = world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert_eq!(
        result.reports.last().unwrap().node.as_deref(),
        Some(node.name.as_str())
    );
    assert!(world.pods_on(&node.name).is_empty());
}

#[tokio::test]
async fn instance_of_a_cluster_not_allowed_is_ignored_without_any_change() {
    let world = World::new("allowed", false).await;
    let node = world.node(None).await;
    let foreign = world
        .instance(Some("someone-elses"), "c5.xlarge", true)
        .await;
    let untagged = world.instance(None, "c5.xlarge", true).await;
    world.kube.clear_requests();
    let handler = world.handler(world.config());

    for (instance, why) in [
        (foreign.as_str(), "not in EKS_REMEDY_CLUSTERS"),
        (untagged.as_str(), "no EKS cluster tag"),
        ("i-0123456789abcdef0", "unknown to EC2"),
    ] {
        let result = handler
            .handle(&spot_warning(&world, instance, Utc::now()), None)
            .await
            .unwrap();
        assert_eq!(outcomes(&result), [Some(Outcome::Ignored)]);
        assert!(
            result.reports[0].summary.contains(why),
            "{}",
            result.reports[0].summary
        );
    }
    assert!(
        world.kube.requests().is_empty(),
        "the API server was not even asked"
    );
    assert!(world.published().await.is_empty());
    assert_eq!(
        world.node_state(&node.name).unwrap()["spec"].get("unschedulable"),
        None
    );
}

#[tokio::test]
async fn cluster_tagged_for_opt_in_is_acted_on_without_the_allow_list() {
    let world = World::new("opted-in", true).await;
    let node = world.node(None).await;
    let config = eks_remedy::config::Config {
        clusters: eks_remedy::config::ClusterAllowList::parse(""),
        ..world.config()
    };

    let result = world
        .handler(config)
        .handle(&rebalance(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result), [Some(Outcome::Cordoned)]);
}

#[tokio::test]
async fn pdb_that_blocks_until_the_deadline_is_reported_with_the_blocked_pod() {
    let world = World::new("pdb-block", false).await;
    let node = world.node(None).await;
    world
        .kube
        .create(pod("shop", "checkout-1", &node.name, "checkout"));
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    // Issued 116 s ago: 4 s are left before the instance goes.
    let issued = Utc::now() - chrono::TimeDelta::seconds(116);

    let result = world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, issued), None)
        .await
        .unwrap();

    let end = result.reports.last().unwrap();
    assert_eq!(end.outcome, Some(Outcome::PartiallyDrained));
    assert_eq!(end.blocked.len(), 1);
    assert_eq!(end.blocked[0].pod.name, "checkout-1");
    assert_eq!(end.blocked[0].pdb.as_deref(), Some("checkout-pdb"));
    assert!(end.next_steps.iter().any(|s| s.contains("checkout-pdb")));
    assert_eq!(world.pods_on(&node.name), ["checkout-1"]);
    let deletes = mutations(&world)
        .into_iter()
        .filter(|m| m.starts_with("DELETE"))
        .count();
    assert_eq!(deletes, 0, "no pod deleted outside the eviction API");
    let (message, attributes) = world.published().await.pop().unwrap();
    assert_eq!(attributes["outcome"]["Value"], "partially-drained");
    assert!(
        message["content"]["description"]
            .as_str()
            .unwrap()
            .contains("checkout-pdb")
    );
}

#[tokio::test]
async fn delete_policy_removes_a_pod_its_budget_still_blocks_at_the_deadline() {
    let world = World::new("pdb-delete", false).await;
    let node = world.node(None).await;
    world
        .kube
        .create(pod("shop", "checkout-1", &node.name, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    let config = eks_remedy::config::Config {
        deadline_policy: eks_remedy::config::DeadlinePolicy::DeleteWithRemainingGrace,
        ..world.config()
    };
    let issued = Utc::now() - chrono::TimeDelta::seconds(116);

    let result = world
        .handler(config)
        .handle(&spot_warning(&world, &node.instance_id, issued), None)
        .await
        .unwrap();

    let end = result.reports.last().unwrap();
    assert_eq!(end.deleted, ["shop/checkout-1"]);
    assert!(world.pods_on(&node.name).is_empty());
    let delete = world
        .kube
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("a delete");
    assert!(delete.path.ends_with("/pods/checkout-1"));
}

#[tokio::test]
async fn the_same_event_three_times_is_one_incident_with_one_thread() {
    let world = World::new("repeats", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let event = spot_warning(&world, &node.instance_id, Utc::now());
    let handler = world.handler(world.config());

    let first = handler.handle(&event, None).await.unwrap();
    let patches_after_first = mutations(&world).len();
    let second = handler.handle(&event, None).await.unwrap();
    let third = handler.handle(&event, None).await.unwrap();

    assert_eq!(
        outcomes(&first),
        [Some(Outcome::Started), Some(Outcome::Drained)]
    );
    assert_eq!(outcomes(&second), [Some(Outcome::Skipped)]);
    assert_eq!(outcomes(&third), [Some(Outcome::Skipped)]);
    assert_eq!(
        mutations(&world).len(),
        patches_after_first,
        "no repeated action"
    );
    assert_eq!(
        world.published().await.len(),
        2,
        "start and end, nothing for the repeats"
    );
}

#[tokio::test]
async fn the_same_event_five_times_concurrently_opens_one_incident() {
    let world = World::new("concurrent", false).await;
    let node = world.node(None).await;
    for i in 0..5 {
        world
            .kube
            .create(pod("shop", &format!("web-{i}"), &node.name, "web"));
    }
    let event = spot_warning(&world, &node.instance_id, Utc::now());
    let handlers: Vec<_> = (0..5).map(|_| world.handler(world.config())).collect();

    let results = futures::future::join_all(handlers.iter().map(|h| h.handle(&event, None))).await;

    let opened = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .unwrap()
                .reports
                .iter()
                .any(|r| r.outcome == Some(Outcome::Started))
        })
        .count();
    assert_eq!(opened, 1);
    let evictions = world
        .kube
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/eviction"))
        .count();
    assert_eq!(evictions, 5, "each pod evicted once");
    assert_eq!(world.published().await.len(), 2);
}

#[tokio::test]
async fn warning_then_termination_escalates_the_same_incident() {
    let world = World::new("escalation", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let handler = world.handler(world.config());

    handler
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();
    let result = handler
        .handle(
            &state_change(&world, &node.instance_id, "terminated", Utc::now()),
            None,
        )
        .await
        .unwrap();

    assert_eq!(outcomes(&result), [Some(Outcome::OutOfService)]);
    let state = world.node_state(&node.name).unwrap();
    assert_eq!(
        taint_keys(&state),
        [
            "eks-remedy.io/interruption",
            "node.kubernetes.io/out-of-service"
        ]
    );
    let published = world.published().await;
    assert_eq!(published.len(), 3);
    let threads: std::collections::BTreeSet<_> = published
        .iter()
        .map(|(m, _)| m["metadata"]["threadId"].to_string())
        .collect();
    assert_eq!(threads.len(), 1, "one notification thread");
}

#[tokio::test]
async fn termination_during_a_blocked_drain_stops_it_and_reports_the_race() {
    let world = World::new("race", false).await;
    let node = world.node(None).await;
    world
        .kube
        .create(pod("shop", "checkout-1", &node.name, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    let handler = world.handler(world.config());
    let warning = spot_warning(&world, &node.instance_id, Utc::now());

    let drain = handler.handle(&warning, None);
    let terminate = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        handler
            .handle(
                &state_change(&world, &node.instance_id, "terminated", Utc::now()),
                None,
            )
            .await
    };
    let (drained, terminated) = tokio::join!(drain, terminate);

    assert_eq!(
        outcomes(&terminated.unwrap()),
        [Some(Outcome::OutOfService)]
    );
    assert_eq!(
        outcomes(&drained.unwrap()).last(),
        Some(&Some(Outcome::TerminationRaced))
    );
}

#[tokio::test]
async fn evictions_are_sent_concurrently() {
    let options = eks_remedy_tests::ServerOptions {
        latency: std::time::Duration::from_millis(40),
        ..Default::default()
    };
    let world = World::with_options("many-pods", false, options).await;
    let node = world.node(None).await;
    for i in 0..40 {
        world
            .kube
            .create(pod("shop", &format!("web-{i:02}"), &node.name, "web"));
    }

    world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert!(world.pods_on(&node.name).is_empty());
    assert!(
        world.kube.max_concurrent_evictions() >= 10,
        "at most {} evictions overlapped",
        world.kube.max_concurrent_evictions()
    );
}

#[tokio::test]
async fn empty_dir_pods_are_evicted_and_noted() {
    let world = World::new("empty-dir", false).await;
    let node = world.node(None).await;
    let mut cache = pod("shop", "cache-1", &node.name, "cache");
    cache["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    world.kube.create(cache);

    let result = world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert!(world.pods_on(&node.name).is_empty());
    let end = result.reports.last().unwrap();
    assert!(
        end.notes
            .iter()
            .any(|n| n.contains("emptyDir") && n.contains("shop/cache-1"))
    );
}

#[tokio::test]
async fn dry_run_reports_the_plan_and_changes_nothing() {
    let world = World::new("dry-run", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "web-1", &node.name, "web"));
    let config = eks_remedy::config::Config {
        dry_run: true,
        ..world.config()
    };

    let result = world
        .handler(config)
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    assert!(mutations(&world).is_empty(), "{:?}", mutations(&world));
    assert_eq!(world.pods_on(&node.name), ["web-1"]);
    let end = result.reports.last().unwrap();
    assert!(end.dry_run);
    assert!(end.steps.iter().all(|s| s.result == "dry-run"));
    assert_eq!(end.steps.len(), 3, "cordon, taint and drain are planned");
    let (message, _) = world.published().await.pop().unwrap();
    assert!(
        message["content"]["title"]
            .as_str()
            .unwrap()
            .contains("dry run")
    );
}

#[tokio::test]
async fn sqs_batch_handles_good_records_and_rejects_malformed_ones() {
    let world = World::new("sqs", false).await;
    let node = world.node(None).await;
    let event = rebalance(&world, &node.instance_id, Utc::now());
    let batch = json!({"Records": [
        {"eventSource": "aws:sqs", "messageId": "good", "body": event.to_string()},
        {"eventSource": "aws:sqs", "messageId": "bad", "body": "{\"not\": \"an event\"}"},
    ]});

    let result = world
        .handler(world.config())
        .handle(&batch, None)
        .await
        .unwrap();

    assert_eq!(outcomes(&result), [Some(Outcome::Cordoned)]);
    assert_eq!(result.rejected.len(), 1);
    assert!(result.rejected[0].contains("EventBridge event"));
    assert!(
        result.batch_item_failures.is_empty(),
        "a malformed message is not retried"
    );
}

#[tokio::test]
async fn drain_waits_for_the_volume_attachments_of_the_moved_pods_only() {
    let world = World::new("volumes", false).await;
    let node = world.node(None).await;
    let mut db = pod("shop", "db-0", &node.name, "db");
    db["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]);
    world.kube.create(db);
    world.kube.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "shop"},
        "spec": {"volumeName": "pvc-db", "accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Bound"}}));
    for (name, pv) in [("csi-db", "pvc-db"), ("csi-other", "pvc-other")] {
        world.kube.create(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {"attacher": "ebs.csi.aws.com", "nodeName": node.name,
                "source": {"persistentVolumeName": pv}},
            "status": {"attached": true}}),
        );
    }

    let result = world
        .handler(world.config())
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    let end = result.reports.last().unwrap();
    assert_eq!(end.outcome, Some(Outcome::Drained));
    assert!(
        end.notes.iter().all(|n| !n.contains("VolumeAttachments")),
        "{:?}",
        end.notes
    );
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-db")
            .is_none()
    );
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-other")
            .is_some()
    );
    let va_lists = world
        .kube
        .requests()
        .iter()
        .filter(|r| r.path == "/apis/storage.k8s.io/v1/volumeattachments")
        .count();
    assert!(va_lists >= 1, "the drain looked at the attachments");
}

#[tokio::test]
async fn lifecycle_heartbeats_keep_the_instance_while_a_budget_delays_the_drain() {
    let world = World::new("heartbeats", false).await;
    let (group, hook, instance) = world.auto_scaling_group("ng-slow", 2).await;
    let name = "ip-10-0-8-8.ec2.internal";
    world
        .kube
        .create(node_object(name, &instance, "us-east-1a"));
    world
        .kube
        .create(pod("shop", "checkout-1", name, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    let handler = world.handler(world.config());
    let event = lifecycle_action(&world, &group, &hook, &instance, Utc::now());

    let drain = handler.handle(&event, None);
    let relax = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert!(world.kube.remove(
            "policy/v1",
            "PodDisruptionBudget",
            Some("shop"),
            "checkout-pdb"
        ));
    };
    let (result, ()) = tokio::join!(drain, relax);

    let end = result.unwrap().reports.pop().unwrap();
    assert_eq!(end.outcome, Some(Outcome::Drained));
    assert!(
        end.notes.iter().any(|n| n.contains("lifecycle heartbeats")),
        "{:?}",
        end.notes
    );
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
}

#[tokio::test]
async fn volume_attachments_that_stay_are_reported_after_the_bounded_wait() {
    let options = eks_remedy_tests::ServerOptions {
        attach_detach_controller: false,
        ..Default::default()
    };
    let world = World::with_options("volumes-stuck", false, options).await;
    let node = world.node(None).await;
    let mut db = pod("shop", "db-0", &node.name, "db");
    db["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]);
    world.kube.create(db);
    world
        .kube
        .create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "shop"},
        "spec": {"volumeName": "pvc-db"}, "status": {"phase": "Bound"}}));
    world.kube.create(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-db"},
        "spec": {"attacher": "ebs.csi.aws.com", "nodeName": node.name,
            "source": {"persistentVolumeName": "pvc-db"}}}),
    );
    let config = eks_remedy::config::Config {
        volume_detach_wait: std::time::Duration::from_secs(1),
        ..world.config()
    };

    let result = world
        .handler(config)
        .handle(&spot_warning(&world, &node.instance_id, Utc::now()), None)
        .await
        .unwrap();

    let end = result.reports.last().unwrap();
    assert!(world.pods_on(&node.name).is_empty());
    assert!(
        end.notes
            .iter()
            .any(|n| n.contains("VolumeAttachments still on the node: csi-db")),
        "{:?}",
        end.notes
    );
}

#[tokio::test]
async fn stopping_then_terminated_escalates_and_a_restart_gives_the_node_back() {
    let world = World::new("stop-start", false).await;
    let node = world.node(None).await;
    world.kube.create(pod("shop", "a-1", &node.name, "a"));
    let handler = world.handler(world.config());

    handler
        .handle(
            &state_change(&world, &node.instance_id, "stopping", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert!(world.pods_on(&node.name).is_empty());

    // Started again: the node takes pods again and the incident is closed.
    let running = handler
        .handle(
            &state_change(&world, &node.instance_id, "running", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&running), [Some(Outcome::Resolved)]);
    let state = world.node_state(&node.name).unwrap();
    assert_eq!(state["spec"].get("unschedulable"), None);
    assert!(taint_keys(&state).is_empty());
    assert!(state["metadata"]["annotations"].get(ANNOTATION).is_none());

    // The next stop is a new incident and drains the new pod; then termination escalates it.
    world.kube.create(pod("shop", "a-2", &node.name, "a"));
    let second = handler
        .handle(
            &state_change(&world, &node.instance_id, "stopping", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&second).last(), Some(&Some(Outcome::Drained)));
    assert!(world.pods_on(&node.name).is_empty());
    let gone = handler
        .handle(
            &state_change(&world, &node.instance_id, "terminated", Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&gone), [Some(Outcome::OutOfService)]);
}

#[tokio::test]
async fn a_repeated_hook_event_waits_for_the_drain_before_completing() {
    let world = World::new("hook-repeat", false).await;
    let (group, hook, instance) = world.auto_scaling_group("ng-rep", 300).await;
    let name = "ip-10-0-9-9.ec2.internal";
    world
        .kube
        .create(node_object(name, &instance, "us-east-1a"));
    world
        .kube
        .create(pod("shop", "checkout-1", name, "checkout"));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));
    let handler = world.handler(world.config());
    let event = lifecycle_action(&world, &group, &hook, &instance, Utc::now());

    let first = handler.handle(&event, None);
    let repeat = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let state_during_drain = world.lifecycle_state(&instance).await;
        let relax = async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            world.kube.remove(
                "policy/v1",
                "PodDisruptionBudget",
                Some("shop"),
                "checkout-pdb",
            );
        };
        let (repeated, ()) = tokio::join!(handler.handle(&event, None), relax);
        (state_during_drain, repeated)
    };
    let (first, (state_during_drain, repeated)) = tokio::join!(first, repeat);

    assert_ne!(state_during_drain, "Terminating:Proceed");
    assert_eq!(
        outcomes(&first.unwrap()).last(),
        Some(&Some(Outcome::Drained))
    );
    let repeated = repeated.unwrap();
    let names: Vec<String> = repeated
        .reports
        .last()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.step.action.name().to_owned())
        .collect();
    assert_eq!(names, ["await-drain", "complete-lifecycle-action"]);
    assert!(world.pods_on(name).is_empty());
    assert_eq!(
        world.lifecycle_state(&instance).await,
        "Terminating:Proceed"
    );
}
