//! How many pods the VPC CNI lets a node run, from the instance type's network limits.
//!
//! Secondary IPs: each ENI gives (IPv4 per ENI - 1) pod addresses, plus 2 for host-network pods.
//! Prefix delegation: each of those slots is a /28 prefix (16 addresses), and the result is
//! capped at 110 on types with 30 vCPUs or fewer and at 250 above; it needs a Nitro (or bare
//! metal) instance, so other types keep the secondary-IP value. Custom networking leaves the
//! primary ENI out. See <https://docs.aws.amazon.com/eks/latest/userguide/choosing-instance-type.html>.

use serde::Serialize;

use crate::aws::{AwsError, aws_err};

/// What DescribeInstanceTypes says about a type, as far as pod density goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceTypeFacts {
    pub instance_type: String,
    pub vcpus: u32,
    /// `nitro`, `xen`, or empty (bare metal reports none).
    pub hypervisor: String,
    pub bare_metal: bool,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
}

impl InstanceTypeFacts {
    /// Prefix delegation works on Nitro and bare metal instances.
    pub fn supports_prefix_delegation(&self) -> bool {
        self.hypervisor == "nitro" || self.bare_metal
    }

    /// Security Groups for Pods needs ENI trunking, which no burstable (t) type supports.
    pub fn supports_trunking(&self) -> bool {
        self.supports_prefix_delegation() && !self.instance_type.starts_with('t')
    }
}

/// The CNI modes that change the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CniMode {
    pub prefix_delegation: bool,
    pub custom_networking: bool,
}

/// A max-pods value and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaxPods {
    pub instance_type: String,
    pub max_pods: u32,
    pub mode: CniMode,
    /// The arithmetic, for people.
    pub working: String,
    /// Set when a requested mode does not apply to this type.
    pub note: Option<String>,
}

/// The cap prefix delegation applies, by vCPU count.
pub fn prefix_delegation_cap(vcpus: u32) -> u32 {
    if vcpus <= 30 { 110 } else { 250 }
}

/// Computes max pods for `facts` in `mode`.
pub fn max_pods(facts: &InstanceTypeFacts, mode: CniMode) -> MaxPods {
    let enis = if mode.custom_networking {
        facts.max_enis.saturating_sub(1)
    } else {
        facts.max_enis
    };
    let slots = facts.ipv4_per_eni.saturating_sub(1);
    let eni_text = if mode.custom_networking {
        format!("({} ENIs - 1 for custom networking)", facts.max_enis)
    } else {
        format!("{enis} ENIs")
    };
    let secondary = enis * slots + 2;
    if mode.prefix_delegation && facts.supports_prefix_delegation() {
        let raw = enis * slots * 16 + 2;
        let cap = prefix_delegation_cap(facts.vcpus);
        MaxPods {
            instance_type: facts.instance_type.clone(),
            max_pods: raw.min(cap),
            mode,
            working: format!(
                "{eni_text} x ({} IPv4 per ENI - 1) x 16 per /28 prefix + 2 = {raw}, capped at {cap} for {} vCPUs",
                facts.ipv4_per_eni, facts.vcpus
            ),
            note: None,
        }
    } else {
        let note = (mode.prefix_delegation).then(|| {
            format!(
                "{} is not a Nitro instance: prefix delegation does not apply",
                facts.instance_type
            )
        });
        MaxPods {
            instance_type: facts.instance_type.clone(),
            max_pods: secondary,
            mode,
            working: format!(
                "{eni_text} x ({} IPv4 per ENI - 1) + 2 = {secondary}",
                facts.ipv4_per_eni
            ),
            note,
        }
    }
}

/// Reads the network limits of instance types from EC2 (all pages).
pub async fn describe_instance_types(
    ec2: &aws_sdk_ec2::Client,
    types: &[String],
) -> Result<Vec<InstanceTypeFacts>, AwsError> {
    let mut facts = Vec::new();
    if types.is_empty() {
        return Ok(facts);
    }
    let mut next: Option<String> = None;
    loop {
        let output = ec2
            .describe_instance_types()
            .set_instance_types(Some(types.iter().map(|t| t.as_str().into()).collect()))
            .set_next_token(next.clone())
            .send()
            .await
            .map_err(aws_err("DescribeInstanceTypes", &types.join(",")))?;
        for t in output.instance_types() {
            let network = t.network_info();
            facts.push(InstanceTypeFacts {
                instance_type: t
                    .instance_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                vcpus: t
                    .v_cpu_info()
                    .and_then(|v| v.default_v_cpus())
                    .unwrap_or(0)
                    .max(0) as u32,
                hypervisor: t
                    .hypervisor()
                    .map(|h| h.as_str().to_owned())
                    .unwrap_or_default(),
                bare_metal: t.bare_metal().unwrap_or(false),
                max_enis: network
                    .and_then(|n| n.maximum_network_interfaces())
                    .unwrap_or(0)
                    .max(0) as u32,
                ipv4_per_eni: network
                    .and_then(|n| n.ipv4_addresses_per_interface())
                    .unwrap_or(0)
                    .max(0) as u32,
            });
        }
        next = output.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(facts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../tests/fixtures/reference/eni-max-pods.tsv");

    #[test]
    fn reproduces_the_reference_table_from_its_own_limits() {
        let mut rows = REFERENCE.lines();
        let header: Vec<&str> = rows.next().unwrap().split('\t').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        for line in rows.filter(|l| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split('\t').collect();
            let facts = InstanceTypeFacts {
                instance_type: cells[col("instance_type")].into(),
                vcpus: cells[col("vcpus")].parse().unwrap(),
                hypervisor: cells[col("hypervisor")].into(),
                bare_metal: cells[col("bare_metal")] == "true",
                max_enis: cells[col("max_enis")].parse().unwrap(),
                ipv4_per_eni: cells[col("ipv4_per_eni")].parse().unwrap(),
            };
            let expect = |c: &str| cells[col(c)].parse::<u32>().unwrap();
            let of = |pd, cn| {
                max_pods(
                    &facts,
                    CniMode {
                        prefix_delegation: pd,
                        custom_networking: cn,
                    },
                )
                .max_pods
            };
            assert_eq!(of(false, false), expect("max_pods_secondary"), "{line}");
            assert_eq!(of(true, false), expect("max_pods_prefix"), "{line}");
            assert_eq!(
                of(false, true),
                expect("max_pods_custom_networking"),
                "{line}"
            );
        }
    }

    #[test]
    fn prefix_delegation_can_lower_the_limit_where_the_cap_bites() {
        let c5_4xlarge = InstanceTypeFacts {
            instance_type: "c5.4xlarge".into(),
            vcpus: 16,
            hypervisor: "nitro".into(),
            bare_metal: false,
            max_enis: 8,
            ipv4_per_eni: 30,
        };
        assert_eq!(max_pods(&c5_4xlarge, CniMode::default()).max_pods, 234);
        let pd = max_pods(
            &c5_4xlarge,
            CniMode {
                prefix_delegation: true,
                custom_networking: false,
            },
        );
        assert_eq!(pd.max_pods, 110);
        assert!(pd.working.contains("capped at 110"));
    }

    #[test]
    fn bare_metal_without_a_hypervisor_supports_prefix_delegation() {
        let metal = InstanceTypeFacts {
            instance_type: "c5.metal".into(),
            vcpus: 96,
            hypervisor: String::new(),
            bare_metal: true,
            max_enis: 15,
            ipv4_per_eni: 50,
        };
        let pd = max_pods(
            &metal,
            CniMode {
                prefix_delegation: true,
                custom_networking: false,
            },
        );
        assert_eq!(pd.max_pods, 250);
        assert!(!metal.supports_trunking() || metal.bare_metal);
    }
}
