//! The eks-remedy demo: no AWS account needed. Builds small worlds in moto (EKS clusters, EC2
//! instances, add-ons, IAM roles, an SNS topic) and on the Kubernetes test API server, then runs
//! the three functions' handlers on real event shapes and prints the Slack messages:
//! a spot interruption drained, Pending pods fixed with prefix delegation, and volumes repaired
//! (Pod Identity for the EBS CSI driver, a volume held by a lost node).
//!
//! Run it through `tests/demo.sh`, which starts moto on 127.0.0.1 first.

use chrono::Utc;
use eks_remedy::invocation::Function;
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

    pending_pods().await;
    volumes().await;
}

/// The seed's IP exhaustion: 3 c5.xlarge at 58 pods, 43 replicas Pending.
async fn pending_pods() {
    banner("Pending pods: 3 x c5.xlarge at max pods, 43 replicas Pending with \"Too many pods\"");
    let world = World::new("demo-pending", true).await;
    let mut placed = 0;
    for _ in 0..3 {
        let node = world.typed_node("c5.xlarge", 58, "ng-1").await;
        for _ in 0..58 {
            world
                .kube
                .create(pod("shop", &format!("web-{placed:03}"), &node.name, "web"));
            placed += 1;
        }
    }
    for p in 0..43 {
        let name = format!("web-pending-{p:02}");
        world.kube.create(pending_pod("shop", &name, "web"));
        world.kube.create(pod_event(
            "shop",
            &name,
            "FailedScheduling",
            TOO_MANY_PODS,
            1,
        ));
    }
    world
        .vpc_cni_addon(
            "v1.18.3-eksbuild.1",
            Some(r#"{"env":{"WARM_ENI_TARGET":"1"}}"#),
        )
        .await;
    world
        .kube
        .create(aws_node_daemonset("v1.18.3-eksbuild.1", &[]));
    println!(
        "  vpc-cni configuration before: {}",
        world.vpc_cni_configuration().await.unwrap_or_default()
    );
    let alarm = pending_alarm(&world, "ALARM", "OK", Utc::now());
    println!(
        "  CloudWatch Alarm State Change: {} -> ALARM",
        alarm["detail"]["alarmName"].as_str().unwrap_or("")
    );
    let result = world
        .pending_handler(world.config())
        .handle(&alarm, None)
        .await;
    report_result(&result);
    show_messages(&world).await;
    println!(
        "  vpc-cni configuration after:  {}",
        world.vpc_cni_configuration().await.unwrap_or_default()
    );
}

/// The seed's volume problems: no credentials for the EBS CSI driver, and a volume held by a
/// node whose instance stopped.
async fn volumes() {
    banner("Volumes: the EBS CSI controller has no AWS credentials (no EC2 IMDS role found)");
    let world = World::new("demo-volumes", true).await;
    ebs_csi_controller(&world, None);
    failed_claim(&world, "reports-data", NO_IMDS_ROLE);
    world
        .addon("aws-ebs-csi-driver", "v1.35.0-eksbuild.1")
        .await;
    let role = world.role("demo-ebs-csi-pod-identity", true).await;
    let mut config = world.config();
    config.pod_identity_roles = vec![format!("kube-system/ebs-csi-controller-sa={role}")];
    let handler = world.volume_handler(config);
    let result = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await;
    report_result(&result);
    show_messages(&world).await;
    println!(
        "  Pod Identity associations now: {:?}",
        world.associations().await
    );

    banner(
        "Volumes: db-0 cannot attach its volume, still held by a node whose spot instance stopped",
    );
    let node = world.node(None).await;
    let _ = world
        .aws
        .ec2
        .stop_instances()
        .instance_ids(&node.instance_id)
        .send()
        .await;
    world.kube.update("v1", "Node", None, &node.name, |n| {
        n["status"]["conditions"] =
            json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]);
    });
    world.kube.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-db"},
        "spec": {"attacher": "ebs.csi.aws.com", "nodeName": node.name, "source": {"persistentVolumeName": "pvc-db"}}}));
    world.kube.create(pod_event("shop", "db-0", "FailedAttachVolume",
        "Multi-Attach error for volume \"pvc-db\" Volume is already exclusively attached to one node and can't be attached to another", 1));
    let result = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await;
    report_result(&result);
    show_messages(&world).await;
    show_node(&world, &node.name);
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
