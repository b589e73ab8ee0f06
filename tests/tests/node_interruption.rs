//! End to end: AWS documentation events through the node-interruption handler, against moto
//! (EC2, EKS, Auto Scaling, SNS, SQS) and the Kubernetes test API server, over HTTP.

use chrono::Utc;
use eks_remedy::incident::ANNOTATION;
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
