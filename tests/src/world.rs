//! Builders for a test world: an EKS cluster in moto whose API server is a [`KubeServer`],
//! EC2 instances behind its nodes, pods, PodDisruptionBudgets, and the events AWS would send.

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::config::Config;
use eks_remedy::interruption::NodeInterruption;
use eks_remedy::invocation::Function;
use serde_json::{Value, json};

use crate::aws::{any_image, drain_queue, fresh_account};
use crate::kube::{KubeServer, ServerOptions};

/// The tag the moto extension reads to point DescribeCluster at a local API server.
pub const TEST_ENDPOINT_TAG: &str = "eks-remedy.test/endpoint";

/// One cluster: its AWS account in moto, its API server, and a topic whose messages land in a
/// queue the test reads.
pub struct World {
    pub sdk: SdkConfig,
    pub aws: AwsClients,
    pub sqs: aws_sdk_sqs::Client,
    pub account: String,
    pub region: String,
    pub cluster: String,
    pub kube: KubeServer,
    pub topic_arn: String,
    pub queue_url: String,
    image: String,
    subnet: String,
}

/// An instance and the node that runs on it.
#[derive(Debug, Clone)]
pub struct TestNode {
    pub instance_id: String,
    pub name: String,
    pub zone: String,
}

impl World {
    /// A cluster named `cluster` (opted in with the tag when `opt_in`) in a fresh account.
    pub async fn new(cluster: &str, opt_in: bool) -> Self {
        Self::with_options(cluster, opt_in, ServerOptions::default()).await
    }

    pub async fn with_options(cluster: &str, opt_in: bool, options: ServerOptions) -> Self {
        let region = "us-east-1".to_owned();
        let (sdk, account) = fresh_account(&region).await;
        let aws = AwsClients::new(sdk.clone());
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let kube = KubeServer::start(options).await.expect("test API server");

        let mut tags = vec![(TEST_ENDPOINT_TAG.to_owned(), kube.url())];
        if opt_in {
            tags.push(("eks-remedy/enabled".to_owned(), "true".to_owned()));
        }
        aws.eks
            .create_cluster()
            .name(cluster)
            .role_arn(format!("arn:aws:iam::{account}:role/eks-cluster"))
            .resources_vpc_config(aws_sdk_eks::types::VpcConfigRequest::builder().build())
            .set_tags(Some(tags.into_iter().collect()))
            .send()
            .await
            .expect("CreateCluster");

        let vpc = aws
            .ec2
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await
            .expect("CreateVpc");
        let vpc_id = vpc
            .vpc()
            .and_then(|v| v.vpc_id())
            .unwrap_or_default()
            .to_owned();
        let subnet = aws
            .ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.0.0/20")
            .availability_zone("us-east-1a")
            .send()
            .await
            .expect("CreateSubnet");
        let subnet = subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_owned();

        let topic = aws
            .sns
            .create_topic()
            .name("eks-remedy-reports")
            .send()
            .await
            .expect("CreateTopic");
        let topic_arn = topic.topic_arn().unwrap_or_default().to_owned();
        let queue = sqs
            .create_queue()
            .queue_name("eks-remedy-reports")
            .send()
            .await
            .expect("CreateQueue");
        let queue_url = queue.queue_url().unwrap_or_default().to_owned();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes");
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        aws.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .expect("Subscribe");
        let image = any_image(&aws.ec2).await;

        Self {
            sdk,
            aws,
            sqs,
            account,
            region,
            cluster: cluster.to_owned(),
            kube,
            topic_arn,
            queue_url,
            image,
            subnet,
        }
    }

    /// The configuration a deployment for this world would have.
    pub fn config(&self) -> Config {
        Config {
            clusters: eks_remedy::config::ClusterAllowList::parse(&self.cluster),
            topic_arn: Some(self.topic_arn.clone()),
            poll_interval: std::time::Duration::from_millis(20),
            volume_detach_wait: std::time::Duration::from_secs(5),
            ..Config::default()
        }
    }

    /// The handler as the Lambda builds it: EKS access with signed tokens.
    pub fn handler(&self, config: Config) -> NodeInterruption {
        let access = ClusterAccess::eks(self.aws.clone());
        NodeInterruption::new(self.aws.clone(), access, config)
    }

    /// Launches an instance tagged for `cluster` (or for none).
    pub async fn instance(&self, cluster: Option<&str>, instance_type: &str, spot: bool) -> String {
        let mut run = self
            .aws
            .ec2
            .run_instances()
            .image_id(&self.image)
            .instance_type(instance_type.into())
            .subnet_id(&self.subnet)
            .min_count(1)
            .max_count(1);
        if spot {
            run = run.instance_market_options(
                aws_sdk_ec2::types::InstanceMarketOptionsRequest::builder()
                    .market_type(aws_sdk_ec2::types::MarketType::Spot)
                    .build(),
            );
        }
        let out = run.send().await.expect("RunInstances");
        let id = out.instances()[0]
            .instance_id()
            .unwrap_or_default()
            .to_owned();
        let mut tags = vec![("eks:nodegroup-name", "ng-spot".to_owned())];
        if let Some(c) = cluster {
            tags.push(("eks:cluster-name", c.to_owned()));
            tags.push(("kubernetes.io/cluster/placeholder", "ignored".to_owned()));
        }
        let mut req = self.aws.ec2.create_tags().resources(&id);
        for (k, v) in tags {
            req = req.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
        }
        req.send().await.expect("CreateTags");
        id
    }

    /// An instance of this cluster and its Ready node, named `name` (or after the instance).
    pub async fn node(&self, name: Option<&str>) -> TestNode {
        let instance_id = self.instance(Some(&self.cluster), "c5.xlarge", true).await;
        let name = name
            .map(str::to_owned)
            .unwrap_or_else(|| instance_id.clone());
        let zone = "us-east-1a".to_owned();
        self.kube.create(node_object(&name, &instance_id, &zone));
        TestNode {
            instance_id,
            name,
            zone,
        }
    }

    /// An Auto Scaling group with a terminate lifecycle hook; returns (group, hook, instance).
    pub async fn auto_scaling_group(
        &self,
        name: &str,
        heartbeat_timeout: i32,
    ) -> (String, String, String) {
        let template = format!("{name}-lt");
        self.aws
            .ec2
            .create_launch_template()
            .launch_template_name(&template)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&self.image)
                    .instance_type(aws_sdk_ec2::types::InstanceType::C5Xlarge)
                    .build(),
            )
            .send()
            .await
            .expect("CreateLaunchTemplate");
        self.aws
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(&template)
                    .build(),
            )
            .min_size(1)
            .max_size(1)
            .vpc_zone_identifier(&self.subnet)
            .send()
            .await
            .expect("CreateAutoScalingGroup");
        let hook = format!("{name}-drain");
        self.aws
            .autoscaling
            .put_lifecycle_hook()
            .auto_scaling_group_name(name)
            .lifecycle_hook_name(&hook)
            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
            .heartbeat_timeout(heartbeat_timeout)
            .send()
            .await
            .expect("PutLifecycleHook");
        let instances = self
            .aws
            .autoscaling
            .describe_auto_scaling_instances()
            .send()
            .await
            .expect("DescribeAutoScalingInstances");
        let instance = instances
            .auto_scaling_instances()
            .iter()
            .find(|i| i.auto_scaling_group_name() == Some(name))
            .and_then(|i| i.instance_id())
            .expect("the group launched an instance")
            .to_owned();
        self.aws
            .ec2
            .create_tags()
            .resources(&instance)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("eks:cluster-name")
                    .value(&self.cluster)
                    .build(),
            )
            .send()
            .await
            .expect("CreateTags");
        (name.to_owned(), hook, instance)
    }

    /// The lifecycle state Auto Scaling reports for an instance.
    pub async fn lifecycle_state(&self, instance_id: &str) -> String {
        let out = self
            .aws
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .expect("DescribeAutoScalingInstances");
        out.auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .unwrap_or_default()
            .to_owned()
    }

    /// Every report published so far: (chat message, SNS message attributes).
    pub async fn published(&self) -> Vec<(Value, Value)> {
        drain_queue(&self.sqs, &self.queue_url)
            .await
            .into_iter()
            .map(|envelope| {
                let message: Value =
                    serde_json::from_str(envelope["Message"].as_str().unwrap_or("{}"))
                        .expect("the SQS variant of the report is JSON");
                (message, envelope["MessageAttributes"].clone())
            })
            .collect()
    }

    /// The node as the API server has it.
    pub fn node_state(&self, name: &str) -> Option<Value> {
        self.kube.get("v1", "Node", None, name)
    }

    /// Names of the pods left on a node.
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .kube
            .list("v1", "Pod")
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    }
}

/// A Ready c5.xlarge spot node as EKS managed node groups label it.
pub fn node_object(name: &str, instance_id: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "c5.xlarge",
            "eks.amazonaws.com/nodegroup": "ng-spot", "eks.amazonaws.com/capacityType": "SPOT",
            "topology.kubernetes.io/zone": zone}},
        "spec": {"providerID": format!("aws:///{zone}/{instance_id}")},
        "status": {
            "capacity": {"cpu": "4", "memory": "7824904Ki", "pods": "58"},
            "allocatable": {"cpu": "3920m", "memory": "7134728Ki", "pods": "58"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status"}]}
    })
}

/// A Running, Ready pod of a ReplicaSet (`owner` = app name) on `node`.
pub fn pod(namespace: &str, name: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-rs"),
                "uid": "00000000-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
            "containers": [{"name": app, "image": "public.ecr.aws/nginx/nginx:1.27"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// A DaemonSet pod on `node`.
pub fn daemonset_pod(name: &str, node: &str) -> Value {
    let mut p = pod("kube-system", name, node, "aws-node");
    p["metadata"]["ownerReferences"][0]["kind"] = json!("DaemonSet");
    p["metadata"]["ownerReferences"][0]["name"] = json!("aws-node");
    p
}

/// A static pod's mirror on `node`.
pub fn mirror_pod(name: &str, node: &str) -> Value {
    let mut p = pod("kube-system", name, node, "static");
    p["metadata"]["annotations"] =
        json!({"kubernetes.io/config.mirror": "abc", "kubernetes.io/config.source": "file"});
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": "00000000-0000-4000-8000-000000000002", "controller": true}]);
    p
}

/// A PodDisruptionBudget with `minAvailable` over `app`.
pub fn pdb(namespace: &str, name: &str, app: &str, min_available: i64) -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}
    })
}

/// Reads an AWS documentation sample from `tests/fixtures/aws-docs`.
pub fn sample(name: &str) -> Value {
    let path = format!("{}/fixtures/aws-docs/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

fn stamp(mut event: Value, world: &World, time: DateTime<Utc>, id: &str) -> Value {
    event["time"] = json!(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    event["region"] = json!(world.region);
    event["account"] = json!(world.account);
    event["id"] = json!(id);
    event
}

/// The spot interruption warning of the AWS docs, for `instance` issued at `time`.
pub fn spot_warning(world: &World, instance: &str, time: DateTime<Utc>) -> Value {
    let mut e = stamp(
        sample("ec2-spot-instance-interruption-warning.json"),
        world,
        time,
        &format!("spot-{instance}"),
    );
    e["detail"]["instance-id"] = json!(instance);
    e["detail"]["instance-action"] = json!("terminate");
    e["resources"] = json!([format!(
        "arn:aws:ec2:{}:{}:instance/{instance}",
        world.region, world.account
    )]);
    e
}

/// The rebalance recommendation of the AWS docs.
pub fn rebalance(world: &World, instance: &str, time: DateTime<Utc>) -> Value {
    let mut e = stamp(
        sample("ec2-instance-rebalance-recommendation.json"),
        world,
        time,
        &format!("rebalance-{instance}"),
    );
    e["detail"]["instance-id"] = json!(instance);
    e
}

/// The state-change notification of the AWS docs with `state`.
pub fn state_change(world: &World, instance: &str, state: &str, time: DateTime<Utc>) -> Value {
    let mut e = stamp(
        sample("ec2-instance-state-change-notification.json"),
        world,
        time,
        &format!("state-{state}-{instance}"),
    );
    e["detail"]["instance-id"] = json!(instance);
    e["detail"]["state"] = json!(state);
    e
}

/// The terminate lifecycle action of the AWS docs for a group and hook.
pub fn lifecycle_action(
    world: &World,
    group: &str,
    hook: &str,
    instance: &str,
    time: DateTime<Utc>,
) -> Value {
    let mut e = stamp(
        sample("ec2-instance-terminate-lifecycle-action.json"),
        world,
        time,
        &format!("hook-{instance}"),
    );
    e["detail"]["AutoScalingGroupName"] = json!(group);
    e["detail"]["LifecycleHookName"] = json!(hook);
    e["detail"]["EC2InstanceId"] = json!(instance);
    e
}

/// The AWS Health scheduled change of the AWS docs for `instance`, starting at `start`.
pub fn health_change(world: &World, instance: &str, start: DateTime<Utc>) -> Value {
    let mut e = sample("aws-health-ec2-scheduled-change.json");
    e["region"] = json!(world.region);
    e["account"] = json!(world.account);
    e["id"] = json!(format!("health-{instance}"));
    e["time"] = json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    e["detail"]["startTime"] = json!(start.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
    e["detail"]["affectedEntities"][0]["entityValue"] = json!(format!(
        "arn:aws:ec2:{}:{}:instance/{instance}",
        world.region, world.account
    ));
    e
}

/// A Pending pod the scheduler could not place.
pub fn pending_pod(namespace: &str, name: &str, app: &str) -> Value {
    let mut p = pod(namespace, name, "", app);
    p["spec"].as_object_mut().map(|s| s.remove("nodeName"));
    p["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable"}]});
    p
}

/// A core/v1 Event about a pod, as the scheduler or the kubelet writes it.
pub fn pod_event(namespace: &str, pod: &str, reason: &str, message: &str, count: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{pod}.{}", reason.to_lowercase()), "namespace": namespace},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": "Warning", "count": count,
        "firstTimestamp": "2026-12-04T09:00:00Z", "lastTimestamp": "2026-12-04T09:14:00Z",
        "source": {"component": "default-scheduler"}
    })
}

/// The scheduler's message when every node is at its max pods.
pub const TOO_MANY_PODS: &str = "0/3 nodes are available: 3 Too many pods. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";

/// The `aws-node` DaemonSet of a self-managed VPC CNI with `env` on its aws-node container and
/// the network policy agent as a second container.
pub fn aws_node_daemonset(version: &str, env: &[(&str, &str)]) -> Value {
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "aws-node", "namespace": "kube-system", "labels": {"k8s-app": "aws-node"}},
        "spec": {"selector": {"matchLabels": {"k8s-app": "aws-node"}}, "template": {
            "metadata": {"labels": {"k8s-app": "aws-node"}},
            "spec": {"containers": [
                {"name": "aws-node", "image": format!("602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni:{version}"), "env": env},
                {"name": "aws-eks-nodeagent", "image": "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon/aws-network-policy-agent:v1.1.2",
                 "args": ["--enable-network-policy=false"]}
            ]}}}
    })
}

impl World {
    /// A node of `instance_type` with `allocatable` max pods (EC2 instance included).
    pub async fn typed_node(&self, instance_type: &str, allocatable: u32, group: &str) -> TestNode {
        let instance_id = self
            .instance(Some(&self.cluster), instance_type, false)
            .await;
        let mut node = node_object(&instance_id, &instance_id, "us-east-1a");
        node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = json!(instance_type);
        node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] = json!(group);
        node["status"]["allocatable"]["pods"] = json!(allocatable.to_string());
        node["status"]["capacity"]["pods"] = json!(allocatable.to_string());
        self.kube.create(node);
        TestNode {
            name: instance_id.clone(),
            instance_id,
            zone: "us-east-1a".into(),
        }
    }

    /// A managed node group of the cluster in EKS.
    pub async fn node_group(&self, name: &str) {
        self.aws
            .eks
            .create_nodegroup()
            .cluster_name(&self.cluster)
            .nodegroup_name(name)
            .node_role(format!("arn:aws:iam::{}:role/eks-nodes", self.account))
            .subnets(&self.subnet)
            .send()
            .await
            .expect("CreateNodegroup");
    }

    /// The vpc-cni managed add-on with `configuration` values.
    pub async fn vpc_cni_addon(&self, version: &str, configuration: Option<&str>) {
        self.aws
            .eks
            .create_addon()
            .cluster_name(&self.cluster)
            .addon_name("vpc-cni")
            .addon_version(version)
            .set_configuration_values(configuration.map(str::to_owned))
            .send()
            .await
            .expect("CreateAddon");
    }

    /// The add-on's current configuration values.
    pub async fn vpc_cni_configuration(&self) -> Option<String> {
        self.aws
            .eks
            .describe_addon()
            .cluster_name(&self.cluster)
            .addon_name("vpc-cni")
            .send()
            .await
            .expect("DescribeAddon")
            .addon()
            .and_then(|a| a.configuration_values())
            .map(str::to_owned)
    }

    /// The EKS updates recorded for a node group or an add-on.
    pub async fn updates(&self, node_group: Option<&str>, addon: Option<&str>) -> Vec<String> {
        self.aws
            .eks
            .list_updates()
            .name(&self.cluster)
            .set_nodegroup_name(node_group.map(str::to_owned))
            .set_addon_name(addon.map(str::to_owned))
            .send()
            .await
            .expect("ListUpdates")
            .update_ids()
            .to_vec()
    }
}

/// A CloudWatch Alarm State Change for the Pending-pods alarm of `cluster`.
pub fn pending_alarm(world: &World, state: &str, previous: &str, fired_at: DateTime<Utc>) -> Value {
    let path = format!(
        "{}/fixtures/events/cloudwatch-alarm-pending-pods.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut e: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let name = format!("{}-pending-pods", world.cluster);
    e["region"] = json!(world.region);
    e["account"] = json!(world.account);
    e["id"] = json!(format!("alarm-{state}-{}", uuid::Uuid::new_v4()));
    e["resources"] = json!([format!(
        "arn:aws:cloudwatch:{}:{}:alarm:{name}",
        world.region, world.account
    )]);
    e["detail"]["alarmName"] = json!(name);
    e["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"]["dimensions"]["ClusterName"] =
        json!(world.cluster);
    let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string();
    let now = Utc::now();
    let (state_time, previous_time) = if state == "ALARM" {
        (fired_at, fired_at - chrono::TimeDelta::minutes(15))
    } else {
        (now, fired_at)
    };
    e["time"] = json!(state_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    e["detail"]["state"] =
        json!({"value": state, "reason": "test", "timestamp": stamp(state_time)});
    e["detail"]["previousState"] =
        json!({"value": previous, "reason": "test", "timestamp": stamp(previous_time)});
    e
}

impl World {
    /// The pending-pods handler as the Lambda builds it.
    pub fn pending_handler(&self, config: Config) -> eks_remedy::pending::PendingPods {
        eks_remedy::pending::PendingPods::new(
            self.aws.clone(),
            ClusterAccess::eks(self.aws.clone()),
            config,
        )
    }
}

/// The EBS CSI controller Deployment (and its service account, with an IRSA annotation when
/// `irsa_role` is given).
pub fn ebs_csi_controller(world: &World, irsa_role: Option<&str>) {
    world.kube.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ebs-csi-controller", "namespace": "kube-system", "labels": {"app": "ebs-csi-controller"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ebs-csi-controller"}},
            "template": {"metadata": {"labels": {"app": "ebs-csi-controller"}},
                "spec": {"serviceAccountName": "ebs-csi-controller-sa", "containers": [
                    {"name": "ebs-plugin", "image": "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1.35.0"}]}}}
    }));
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "ebs-csi-controller-sa", "namespace": "kube-system"}});
    if let Some(role) = irsa_role {
        sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": role});
    }
    world.kube.create(sa);
}

/// A PersistentVolumeClaim stuck Pending with the driver's ProvisioningFailed event `message`.
pub fn failed_claim(world: &World, name: &str, message: &str) {
    world.kube.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"storageClassName": "gp3", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}},
        "status": {"phase": "Pending"}}));
    let mut event = pod_event("shop", name, "ProvisioningFailed", message, 6);
    event["involvedObject"]["kind"] = json!("PersistentVolumeClaim");
    event["source"] =
        json!({"component": "ebs.csi.aws.com_ebs-csi-controller-6d4b9c7f8d-x2x9k_5b0e3f6a"});
    world.kube.create(event);
}

/// The driver's message when the controller has no AWS credentials.
pub const NO_IMDS_ROLE: &str = "failed to provision volume with StorageClass \"gp3\": rpc error: code = Internal desc = Could not create volume \"pvc-37320210\": could not create volume in EC2: operation error EC2: CreateVolume, get identity: get credentials: failed to refresh cached credentials, no EC2 IMDS role found, operation error ec2imds: GetMetadata, http response error StatusCode: 404, request to EC2 IMDS failed";

impl World {
    /// An IAM role; `pod_identity` gives it the Pod Identity trust and the EBS CSI policy.
    pub async fn role(&self, name: &str, pod_identity: bool) -> String {
        let iam = aws_sdk_iam::Client::new(&self.sdk);
        let trust = if pod_identity {
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"]}]})
        } else {
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        };
        let out = iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .expect("CreateRole");
        if pod_identity {
            iam.attach_role_policy()
                .role_name(name)
                .policy_arn("arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy")
                .send()
                .await
                .expect("AttachRolePolicy");
        }
        out.role().map(|r| r.arn().to_owned()).unwrap_or_default()
    }

    /// An EKS add-on at `version`.
    pub async fn addon(&self, name: &str, version: &str) {
        self.aws
            .eks
            .create_addon()
            .cluster_name(&self.cluster)
            .addon_name(name)
            .addon_version(version)
            .send()
            .await
            .expect("CreateAddon");
    }

    /// The Pod Identity associations of the cluster: (namespace/service account, role ARN).
    pub async fn associations(&self) -> Vec<(String, String)> {
        let list = self
            .aws
            .eks
            .list_pod_identity_associations()
            .cluster_name(&self.cluster)
            .send()
            .await
            .expect("List");
        let mut out = Vec::new();
        for a in list.associations() {
            let d = self
                .aws
                .eks
                .describe_pod_identity_association()
                .cluster_name(&self.cluster)
                .association_id(a.association_id().unwrap_or_default())
                .send()
                .await
                .expect("Describe");
            let a = d.association().unwrap();
            out.push((
                format!(
                    "{}/{}",
                    a.namespace().unwrap_or_default(),
                    a.service_account().unwrap_or_default()
                ),
                a.role_arn().unwrap_or_default().to_owned(),
            ));
        }
        out
    }

    /// The volume-attach handler as the Lambda builds it.
    pub fn volume_handler(&self, config: Config) -> eks_remedy::volumes::VolumeAttach {
        eks_remedy::volumes::VolumeAttach::new(
            self.aws.clone(),
            ClusterAccess::eks(self.aws.clone()),
            config,
        )
    }
}
