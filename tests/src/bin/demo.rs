//! The eks-remedy demo: no AWS account needed. Builds a small world in moto (EKS cluster, spot
//! instances, an SNS topic) and on the Kubernetes test API server (nodes, pods, a
//! PodDisruptionBudget), then replays AWS documentation events through the node-interruption
//! handler and prints the Slack messages and the node before and after.
//!
//! Run it through `tests/demo.sh`, which starts moto on 127.0.0.1 first.

use chrono::Utc;
use eks_remedy_tests::world::*;
use serde_json::{Value, json};

fn show_node(world: &World, name: &str) {
    let Some(node) = world.node_state(name) else {
        println!("  node {name}: gone");
        return;
    };
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}={}:{}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            )
        })
        .collect();
    println!("  node {name}");
    println!(
        "    unschedulable: {}",
        node["spec"]["unschedulable"].as_bool().unwrap_or(false)
    );
    println!(
        "    taints:        {}",
        if taints.is_empty() {
            "none".into()
        } else {
            taints.join(", ")
        }
    );
    println!("    pods:          {}", world.pods_on(name).join(", "));
}

async fn show_messages(world: &World) {
    for (message, attributes) in world.published().await {
        println!(
            "  --- Slack message (thread {}) ---",
            message["metadata"]["threadId"].as_str().unwrap_or("")
        );
        println!("  {}", message["content"]["title"].as_str().unwrap_or(""));
        for line in message["content"]["description"]
            .as_str()
            .unwrap_or("")
            .lines()
        {
            println!("  | {line}");
        }
        for step in message["content"]["nextSteps"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!("  next: {}", step.as_str().unwrap_or(""));
        }
        println!(
            "  SNS attributes: cluster={} kind={} outcome={}",
            attributes["cluster"]["Value"].as_str().unwrap_or(""),
            attributes["kind"]["Value"].as_str().unwrap_or(""),
            attributes["outcome"]["Value"].as_str().unwrap_or("")
        );
    }
}

fn banner(text: &str) {
    println!("\n=== {text} ===");
}

#[tokio::main]
async fn main() {
    let world = World::new("demo-shop", true).await;
    let spot = world.node(Some("ip-10-0-1-11.ec2.internal")).await;
    let spare = world.node(None).await;
    for (name, app) in [
        ("web-5d8f7c9b6d-7xkqp", "web"),
        ("web-5d8f7c9b6d-b2r4n", "web"),
        ("checkout-6f7d9c8b5-2vq9x", "checkout"),
    ] {
        world.kube.create(pod("shop", name, &spot.name, app));
    }
    world.kube.create(pod(
        "shop",
        "checkout-6f7d9c8b5-t7c4n",
        &spare.name,
        "checkout",
    ));
    let mut cache = pod("shop", "cache-7f9c6d5b8-zq2xk", &spot.name, "cache");
    cache["spec"]["volumes"] = json!([{"name": "cache-data", "emptyDir": {"sizeLimit": "1Gi"}}]);
    world.kube.create(cache);
    world
        .kube
        .create(daemonset_pod("aws-node-4xq7r", &spot.name));
    world
        .kube
        .create(pdb("shop", "checkout-pdb", "checkout", 1));

    println!(
        "eks-remedy demo: cluster {} in moto account {} ({}), API server {}",
        world.cluster,
        world.account,
        world.region,
        world.kube.url()
    );
    println!(
        "spot instance {} runs node {}; instance {} runs node {}",
        spot.instance_id, spot.name, spare.instance_id, spare.name
    );

    banner("before");
    show_node(&world, &spot.name);
    show_node(&world, &spare.name);

    let handler = world.handler(world.config());
    let warning = spot_warning(&world, &spot.instance_id, Utc::now());
    banner("EC2 Spot Instance Interruption Warning (AWS docs sample) arrives");
    println!(
        "{}",
        serde_json::to_string_pretty(&warning).unwrap_or_default()
    );
    let result = handler.handle(&warning, None).await;
    report_result(&result);
    show_messages(&world).await;

    banner("after the drain");
    show_node(&world, &spot.name);
    show_node(&world, &spare.name);

    banner("the same warning again (EventBridge delivers at least once)");
    let again = handler.handle(&warning, None).await;
    report_result(&again);
    let published = world.published().await.len();
    println!("  new Slack messages: {published}");

    banner("EC2 Instance State-change Notification: terminated");
    let gone = state_change(&world, &spot.instance_id, "terminated", Utc::now());
    let result = handler.handle(&gone, None).await;
    report_result(&result);
    show_messages(&world).await;
    show_node(&world, &spot.name);
}

fn report_result(
    result: &Result<
        eks_remedy::interruption::InvocationResult,
        eks_remedy::interruption::HandlerError,
    >,
) {
    match result {
        Ok(r) => {
            let outcomes: Vec<Value> = r
                .reports
                .iter()
                .map(|r| json!(r.outcome.map(|o| o.name())))
                .collect();
            println!("  handler outcome: {}", Value::Array(outcomes));
        }
        Err(e) => println!("  handler error: {e}"),
    }
}
