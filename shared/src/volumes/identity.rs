//! Pod Identity for add-on controllers that call AWS: which add-ons, their service accounts and
//! policies (a table, so one code path fixes any of them), what is in place, and what is missing.

use serde::Serialize;

use crate::cni::Version;

/// An add-on whose controller needs AWS credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddonIdentity {
    /// The EKS add-on name (also used when the driver is self-managed).
    pub addon: &'static str,
    /// The CSI provisioner / attacher name in events and StorageClasses, if any.
    pub provisioner: Option<&'static str>,
    pub namespace: &'static str,
    pub service_account: &'static str,
    /// The controller Deployment to restart so its pods get new credentials.
    pub deployment: &'static str,
    /// The AWS managed policy the role needs (`None`: customer-managed, must be configured).
    pub policy_arn: Option<&'static str>,
    /// The first driver version that supports Pod Identity credentials.
    pub pod_identity_since: Version,
}

/// The add-ons eks-remedy knows.
pub const KNOWN_ADDONS: &[AddonIdentity] = &[
    AddonIdentity {
        addon: "aws-ebs-csi-driver",
        provisioner: Some("ebs.csi.aws.com"),
        namespace: "kube-system",
        service_account: "ebs-csi-controller-sa",
        deployment: "ebs-csi-controller",
        policy_arn: Some("arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"),
        pod_identity_since: Version(1, 26, 0),
    },
    AddonIdentity {
        addon: "aws-efs-csi-driver",
        provisioner: Some("efs.csi.aws.com"),
        namespace: "kube-system",
        service_account: "efs-csi-controller-sa",
        deployment: "efs-csi-controller",
        policy_arn: Some("arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"),
        pod_identity_since: Version(2, 0, 0),
    },
    AddonIdentity {
        addon: "aws-load-balancer-controller",
        provisioner: None,
        namespace: "kube-system",
        service_account: "aws-load-balancer-controller",
        deployment: "aws-load-balancer-controller",
        policy_arn: None,
        pod_identity_since: Version(2, 7, 0),
    },
];

/// The agent add-on that serves Pod Identity credentials on each node.
pub const AGENT_ADDON: &str = "eks-pod-identity-agent";
/// The service principal a Pod Identity role must trust.
pub const PODS_PRINCIPAL: &str = "pods.eks.amazonaws.com";

/// Finds the add-on an event is about, by provisioner name in its source or message; `None`
/// for drivers eks-remedy does not know (they are left alone rather than guessed).
pub fn addon_for(text: &str) -> Option<&'static AddonIdentity> {
    KNOWN_ADDONS
        .iter()
        .find(|a| a.provisioner.is_some_and(|p| text.contains(p)))
}

/// What a failure message says about credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialFailure {
    /// No credentials at all (no IMDS role, no web identity).
    Missing,
    /// Credentials without the needed permissions.
    Denied,
    /// A driver too old to use the Pod Identity agent.
    DriverTooOld,
}

/// Classifies a ProvisioningFailed / FailedAttachVolume message.
pub fn credential_failure(message: &str) -> Option<CredentialFailure> {
    if message.contains("invalid endpoint host") && message.contains("169.254.170.23") {
        return Some(CredentialFailure::DriverTooOld);
    }
    let missing = [
        "no EC2 IMDS role found",
        "NoCredentialProviders",
        "WebIdentityErr",
        "get credentials: failed to refresh cached credentials",
    ];
    if missing.iter().any(|m| message.contains(m)) {
        return Some(CredentialFailure::Missing);
    }
    if message.contains("UnauthorizedOperation") || message.contains("AccessDenied") {
        return Some(CredentialFailure::Denied);
    }
    None
}

/// Whether an IAM trust policy lets Pod Identity assume the role (sts:AssumeRole and
/// sts:TagSession for `pods.eks.amazonaws.com`).
pub fn trusts_pod_identity(document: &serde_json::Value) -> bool {
    let statements = match &document["Statement"] {
        serde_json::Value::Array(s) => s.clone(),
        s @ serde_json::Value::Object(_) => vec![s.clone()],
        _ => return false,
    };
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut actions: Vec<String> = Vec::new();
    for s in statements.iter().filter(|s| s["Effect"] == "Allow") {
        if list(&s["Principal"]["Service"])
            .iter()
            .any(|p| p == PODS_PRINCIPAL)
        {
            actions.extend(list(&s["Action"]));
        }
    }
    let has = |a: &str| actions.iter().any(|x| x == a || x == "sts:*");
    has("sts:AssumeRole") && has("sts:TagSession")
}

/// The trust policy eks-remedy writes on roles it creates.
pub fn pod_identity_trust_policy() -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": PODS_PRINCIPAL},
            "Action": ["sts:AssumeRole", "sts:TagSession"]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_from_driver_messages() {
        assert_eq!(
            credential_failure(
                "could not create volume in EC2: get credentials: failed to refresh cached credentials, no EC2 IMDS role found"
            ),
            Some(CredentialFailure::Missing)
        );
        assert_eq!(
            credential_failure(
                "could not create volume in EC2: WebIdentityErr: failed to retrieve credentials"
            ),
            Some(CredentialFailure::Missing)
        );
        assert_eq!(
            credential_failure(
                "could not create volume in EC2: UnauthorizedOperation: You are not authorized"
            ),
            Some(CredentialFailure::Denied)
        );
        assert_eq!(
            credential_failure("dial tcp: invalid endpoint host, \"169.254.170.23\""),
            Some(CredentialFailure::DriverTooOld)
        );
        assert_eq!(
            credential_failure("waiting for a volume to be created"),
            None
        );
    }

    #[test]
    fn trust_needs_both_actions_for_the_pods_principal() {
        assert!(trusts_pod_identity(&pod_identity_trust_policy()));
        let only_assume = serde_json::json!({"Statement": {"Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:AssumeRole"}});
        assert!(!trusts_pod_identity(&only_assume));
        let ec2 = serde_json::json!({"Statement": [{"Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"]}]});
        assert!(!trusts_pod_identity(&ec2));
    }

    #[test]
    fn events_map_to_their_addon() {
        assert_eq!(
            addon_for("ebs.csi.aws.com_ebs-csi-controller-6d4b").map(|a| a.addon),
            Some("aws-ebs-csi-driver")
        );
        assert_eq!(
            addon_for("efs.csi.aws.com_x").map(|a| a.service_account),
            Some("efs-csi-controller-sa")
        );
        assert!(addon_for("csi.vendor.example_controller").is_none());
    }
}
