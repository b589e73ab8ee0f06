//! End to end: volume failures fixed by the volume-attach handler, against moto (EKS add-ons and
//! Pod Identity associations, IAM, EC2) and the Kubernetes test API server.

use eks_remedy::invocation::Function;
use eks_remedy::report::Outcome;
use eks_remedy_tests::world::*;
use serde_json::json;

fn restarted_at(world: &World) -> Option<String> {
    world
        .kube
        .get(
            "apps/v1",
            "Deployment",
            Some("kube-system"),
            "ebs-csi-controller",
        )
        .and_then(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .as_str()
                .map(str::to_owned)
        })
}

fn steps(report: &eks_remedy::report::Report) -> Vec<String> {
    report
        .steps
        .iter()
        .map(|s| s.step.action.name().to_owned())
        .collect()
}

#[tokio::test]
async fn missing_credentials_get_a_pod_identity_association_and_a_controller_restart_once() {
    let world = World::new("ebs-seed", false).await;
    ebs_csi_controller(&world, None);
    failed_claim(&world, "reports-data", NO_IMDS_ROLE);
    world
        .addon("aws-ebs-csi-driver", "v1.35.0-eksbuild.1")
        .await;
    let role = world.role("ebs-csi-pod-identity", true).await;
    let config = eks_remedy::config::Config {
        pod_identity_roles: vec![format!("kube-system/ebs-csi-controller-sa={role}")],
        ..world.config()
    };
    let handler = world.volume_handler(config);

    let result = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert_eq!(report.outcome, Some(Outcome::Remediated), "{report:#?}");
    assert_eq!(
        steps(report),
        [
            "install-pod-identity-agent",
            "create-pod-identity-association",
            "restart-controller"
        ]
    );
    assert_eq!(
        world.associations().await,
        [("kube-system/ebs-csi-controller-sa".to_owned(), role.clone())]
    );
    assert!(restarted_at(&world).is_some());
    let (message, attributes) = world.published().await.pop().unwrap();
    assert_eq!(attributes["outcome"]["Value"], "remediated");
    assert!(
        message["content"]["description"]
            .as_str()
            .unwrap()
            .contains("shop/reports-data")
    );

    // The same failure events are history now: a second sweep does nothing new.
    let restart = restarted_at(&world);
    let again = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(again.reports[0].outcome, Some(Outcome::Skipped));
    assert_eq!(restarted_at(&world), restart);
    assert_eq!(world.associations().await.len(), 1);
    assert!(world.published().await.is_empty());
}

#[tokio::test]
async fn an_association_with_another_role_is_updated_to_the_configured_one() {
    let world = World::new("ebs-other-role", false).await;
    ebs_csi_controller(&world, None);
    failed_claim(&world, "data", NO_IMDS_ROLE);
    world
        .addon("aws-ebs-csi-driver", "v1.35.0-eksbuild.1")
        .await;
    world
        .addon("eks-pod-identity-agent", "v1.3.4-eksbuild.1")
        .await;
    let old = world.role("old-role", true).await;
    let new = world.role("new-role", true).await;
    world
        .aws
        .eks
        .create_pod_identity_association()
        .cluster_name(&world.cluster)
        .namespace("kube-system")
        .service_account("ebs-csi-controller-sa")
        .role_arn(&old)
        .send()
        .await
        .unwrap();
    let config = eks_remedy::config::Config {
        pod_identity_roles: vec![new.clone()],
        ..world.config()
    };

    let result = world
        .volume_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    assert_eq!(
        steps(&result.reports[0]),
        ["update-pod-identity-association", "restart-controller"]
    );
    assert_eq!(world.associations().await[0].1, new);
}

#[tokio::test]
async fn irsa_annotated_service_account_is_noted_and_the_association_still_made() {
    let world = World::new("ebs-irsa", false).await;
    ebs_csi_controller(&world, Some("arn:aws:iam::111111111111:role/irsa-ebs"));
    failed_claim(
        &world,
        "data",
        "could not create volume in EC2: WebIdentityErr: failed to retrieve credentials",
    );
    world
        .addon("aws-ebs-csi-driver", "v1.35.0-eksbuild.1")
        .await;
    world
        .addon("eks-pod-identity-agent", "v1.3.4-eksbuild.1")
        .await;
    let role = world.role("ebs-pi", true).await;
    let config = eks_remedy::config::Config {
        pod_identity_roles: vec![role],
        ..world.config()
    };

    let result = world
        .volume_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("IRSA") && n.contains("irsa-ebs")),
        "{:?}",
        report.notes
    );
    assert!(steps(report).contains(&"create-pod-identity-association".to_owned()));
}

#[tokio::test]
async fn a_driver_older_than_pod_identity_support_is_reported_not_associated() {
    let world = World::new("ebs-old", false).await;
    ebs_csi_controller(&world, None);
    failed_claim(&world, "data", NO_IMDS_ROLE);
    world
        .addon("aws-ebs-csi-driver", "v1.25.0-eksbuild.1")
        .await;
    let role = world.role("ebs-pi", true).await;
    let config = eks_remedy::config::Config {
        pod_identity_roles: vec![role],
        ..world.config()
    };

    let result = world
        .volume_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert_eq!(report.outcome, Some(Outcome::NeedsAttention));
    assert!(
        report
            .next_steps
            .iter()
            .any(|s| s.contains("Upgrade") && s.contains("v1.26.0"))
    );
    assert!(world.associations().await.is_empty());
    assert!(restarted_at(&world).is_none());
}

#[tokio::test]
async fn roles_that_cannot_serve_pod_identity_are_not_used_and_creation_makes_one() {
    let world = World::new("ebs-roles", false).await;
    ebs_csi_controller(&world, None);
    failed_claim(&world, "data", NO_IMDS_ROLE);
    world
        .addon("aws-ebs-csi-driver", "v1.35.0-eksbuild.1")
        .await;
    world
        .addon("eks-pod-identity-agent", "v1.3.4-eksbuild.1")
        .await;
    let ec2_role = world.role("not-for-pods", false).await;

    let config = eks_remedy::config::Config {
        pod_identity_roles: vec![ec2_role],
        ..world.config()
    };
    let result = world
        .volume_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(result.reports[0].outcome, Some(Outcome::NeedsAttention));
    assert!(
        result.reports[0]
            .notes
            .iter()
            .any(|n| n.contains("does not trust pods.eks.amazonaws.com"))
    );
    assert!(world.associations().await.is_empty());

    let config = eks_remedy::config::Config {
        allow_role_creation: true,
        ..world.config()
    };
    let result = world
        .volume_handler(config)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(
        steps(&result.reports[0]),
        [
            "create-role",
            "create-pod-identity-association",
            "restart-controller"
        ]
    );
    let associations = world.associations().await;
    assert!(
        associations[0]
            .1
            .ends_with(":role/eks-remedy/ebs-roles-ebs-csi-controller"),
        "{associations:?}"
    );
}

#[tokio::test]
async fn multi_attach_after_a_spot_loss_is_released_by_the_out_of_service_taint_then_cleaned_up() {
    let world = World::new("lost-node", false).await;
    let node = world.node(None).await;
    world
        .aws
        .ec2
        .stop_instances()
        .instance_ids(&node.instance_id)
        .send()
        .await
        .unwrap();
    world.kube.update("v1", "Node", None, &node.name, |n| {
        n["status"]["conditions"] =
            json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]);
    });
    world.kube.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-db"},
        "spec": {"attacher": "ebs.csi.aws.com", "nodeName": node.name, "source": {"persistentVolumeName": "pvc-db"}},
        "status": {"attached": true}}));
    world.kube.create(pod_event("shop", "db-0", "FailedAttachVolume",
        "Multi-Attach error for volume \"pvc-db\" Volume is already exclusively attached to one node and can't be attached to another", 1));
    let handler = world.volume_handler(world.config());

    let result = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    assert_eq!(steps(&result.reports[0]), ["taint-out-of-service"]);
    let state = world.node_state(&node.name).unwrap();
    assert!(
        state["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/out-of-service")
    );

    // Again: the taint is there, nothing new.
    let again = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert!(steps(&again.reports[0]).is_empty());

    // The node comes back Ready: the taint eks-remedy added goes.
    world.kube.update("v1", "Node", None, &node.name, |n| {
        n["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "reason": "KubeletReady"}]);
    });
    let back = handler
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(steps(&back.reports[0]), ["remove-out-of-service-taint"]);
    assert!(
        world.node_state(&node.name).unwrap()["spec"]
            .get("taints")
            .is_none()
    );
}

#[tokio::test]
async fn attachments_to_deleted_nodes_are_removed_and_ready_nodes_are_never_detached() {
    let world = World::new("stale-va", false).await;
    let ready = world.node(None).await;
    for (name, node, pv) in [
        ("csi-gone", "ip-10-9-9-9.ec2.internal", "pvc-gone"),
        ("csi-ready", ready.name.as_str(), "pvc-ready"),
        // No pod failed on this one: it is left alone even though its node is gone.
        ("csi-quiet", "ip-10-9-9-8.ec2.internal", "pvc-quiet"),
    ] {
        world.kube.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {"attacher": "ebs.csi.aws.com", "nodeName": node, "source": {"persistentVolumeName": pv}}}));
    }
    for (pod, pv) in [("db-1", "pvc-ready"), ("db-2", "pvc-gone")] {
        world.kube.create(pod_event("shop", pod, "FailedAttachVolume",
            &format!("Multi-Attach error for volume \"{pv}\" Volume is already exclusively attached to one node and can't be attached to another"), 1));
    }

    let result = world
        .volume_handler(world.config())
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();

    let report = &result.reports[0];
    assert_eq!(steps(report), ["delete-volume-attachment"]);
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-gone")
            .is_none()
    );
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-quiet")
            .is_some()
    );
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-ready")
            .is_some()
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("never detaches from a running node"))
    );
}

#[tokio::test]
async fn cloudtrail_and_ebs_events_find_their_cluster_and_unrelated_events_are_rejected() {
    let world = World::new("ebs-events", false).await;
    let node = world.node(None).await;
    let handler = world.volume_handler(world.config());
    let trail = json!({"version": "0", "id": "t1", "detail-type": "AWS API Call via CloudTrail", "source": "aws.ec2",
        "account": world.account, "time": "2026-12-04T10:00:00Z", "region": world.region,
        "detail": {"eventSource": "ec2.amazonaws.com", "eventName": "AttachVolume", "errorCode": "Client.VolumeInUse",
            "errorMessage": "vol-0a1b2c3d is already attached to an instance",
            "requestParameters": {"volumeId": "vol-0a1b2c3d", "instanceId": node.instance_id, "device": "/dev/xvdaa"}}});

    let result = handler.handle(&trail, None).await.unwrap();
    assert_eq!(result.reports.len(), 1);
    assert_eq!(
        result.reports[0].cluster.as_deref(),
        Some(world.cluster.as_str())
    );

    let unrelated = json!({"version": "0", "id": "t2", "detail-type": "AWS API Call via CloudTrail", "source": "aws.ec2",
        "account": world.account, "time": "2026-12-04T10:00:00Z", "region": world.region,
        "detail": {"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances"}});
    let result = handler.handle(&unrelated, None).await.unwrap();
    assert!(result.rejected[0].contains("not a volume failure"));
    assert!(result.reports.is_empty());
}

#[tokio::test]
async fn force_detach_frees_a_volume_of_a_stopped_instance_whose_node_is_gone_only_when_allowed() {
    let world = World::new("force-detach", false).await;
    let instance = world
        .instance(Some(&world.cluster), "c5.xlarge", true)
        .await;
    let volume = world
        .aws
        .ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(50)
        .send()
        .await
        .unwrap();
    let volume_id = volume.volume_id().unwrap().to_owned();
    world
        .aws
        .ec2
        .attach_volume()
        .volume_id(&volume_id)
        .instance_id(&instance)
        .device("/dev/xvdaa")
        .send()
        .await
        .unwrap();
    world
        .aws
        .ec2
        .stop_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    world.kube.create(
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-db"},
        "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": volume_id}}}),
    );
    world.kube.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": "csi-db"},
        "spec": {"attacher": "ebs.csi.aws.com", "nodeName": instance, "source": {"persistentVolumeName": "pvc-db"}}}));
    world.kube.create(pod_event("shop", "db-0", "FailedAttachVolume",
        "Multi-Attach error for volume \"pvc-db\" Volume is already exclusively attached to one node and can't be attached to another", 1));
    let attached = |world: &World| {
        let ec2 = world.aws.ec2.clone();
        let id = volume_id.clone();
        async move {
            let out = ec2.describe_volumes().volume_ids(id).send().await.unwrap();
            out.volumes()[0]
                .attachments()
                .iter()
                .filter(|a| a.state().map(|s| s.as_str()) == Some("attached"))
                .count()
        }
    };

    let dry = eks_remedy::config::Config {
        allow_force_detach: true,
        dry_run: true,
        ..world.config()
    };
    let result = world
        .volume_handler(dry)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(
        steps(&result.reports[0]),
        ["delete-volume-attachment", "force-detach-volume"]
    );
    assert_eq!(attached(&world).await, 1, "dry-run changes nothing");
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-db")
            .is_some()
    );

    let allowed = eks_remedy::config::Config {
        allow_force_detach: true,
        ..world.config()
    };
    let result = world
        .volume_handler(allowed)
        .handle(&json!({"cluster": world.cluster}), None)
        .await
        .unwrap();
    assert_eq!(result.reports[0].outcome, Some(Outcome::Remediated));
    assert_eq!(attached(&world).await, 0);
    assert!(
        world
            .kube
            .get("storage.k8s.io/v1", "VolumeAttachment", None, "csi-db")
            .is_none()
    );
}
