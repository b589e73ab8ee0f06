//! `eks-remedy`: the operator CLI. `replay` runs one event through exactly a Lambda's handler;
//! `max-pods` computes a node's pod limit from EC2's instance data.

use eks_remedy::invocation::Function as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::config::Config;
use eks_remedy::interruption::NodeInterruption;
use eks_remedy::maxpods::{CniMode, describe_instance_types, max_pods};
use eks_remedy::pending::PendingPods;
use eks_remedy::volumes::VolumeAttach;

#[derive(Parser)]
#[command(
    name = "eks-remedy",
    version,
    about = "Repairs Amazon EKS clusters: the operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one event (EventBridge, an SQS batch, an SNS notification, or a direct request such
    /// as {"cluster": "prod"}) through a function's handler and prints its reports as JSON.
    /// Exit 0 when handled (also ignored or skipped), 1 when an event was rejected or failed,
    /// 2 when the file or the configuration cannot be used.
    Replay {
        /// The event file; `-` reads standard input.
        event: PathBuf,
        /// The function whose handler runs it; by default chosen from the event's kind
        /// (EC2 and Health events: node-interruption; CloudTrail, EBS notifications and
        /// schedules: volume-attach; alarms and {"cluster": ...}: pending-pods).
        #[arg(long, value_enum)]
        function: Option<Function>,
        /// Decide and report, change nothing (overrides EKS_REMEDY_DRY_RUN).
        #[arg(long)]
        dry_run: bool,
        /// Use this kubeconfig for any cluster instead of EKS DescribeCluster and a token.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Prints the VPC CNI's max pods for an instance type (DescribeInstanceTypes data).
    MaxPods {
        /// The EC2 instance type, for example c5.xlarge.
        #[arg(long)]
        instance_type: String,
        /// With prefix delegation (ENABLE_PREFIX_DELEGATION=true).
        #[arg(long)]
        prefix_delegation: bool,
        /// With custom networking (the primary ENI hosts no pods).
        #[arg(long)]
        custom_networking: bool,
        /// Print the working as JSON instead of the number alone.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Function {
    NodeInterruption,
    PendingPods,
    VolumeAttach,
}

impl Function {
    /// The function an event is for, from its kind.
    fn for_event(payload: &serde_json::Value) -> Self {
        let text = payload.to_string();
        if text.contains("AWS API Call via CloudTrail")
            || text.contains("EBS Volume Notification")
            || text.contains("Scheduled Event")
        {
            Self::VolumeAttach
        } else if payload.get("cluster").is_some() || text.contains("CloudWatch Alarm State Change")
        {
            Self::PendingPods
        } else {
            Self::NodeInterruption
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    eks_remedy::telemetry::init();
    match Cli::parse().command {
        Command::Replay {
            event,
            function,
            dry_run,
            kubeconfig,
        } => replay(event, function, dry_run, kubeconfig).await,
        Command::MaxPods {
            instance_type,
            prefix_delegation,
            custom_networking,
            json,
        } => {
            let mode = CniMode {
                prefix_delegation,
                custom_networking,
            };
            max_pods_command(&instance_type, mode, json).await
        }
    }
}

async fn max_pods_command(instance_type: &str, mode: CniMode, json: bool) -> ExitCode {
    let aws = AwsClients::from_env().await;
    let facts = match describe_instance_types(&aws.ec2, &[instance_type.to_owned()]).await {
        Ok(f) => f,
        Err(err) if err.code.starts_with("InvalidInstanceType") => {
            eprintln!("eks-remedy: EC2 does not know instance type {instance_type}: {err}");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("eks-remedy: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Some(facts) = facts.into_iter().find(|f| f.instance_type == instance_type) else {
        eprintln!("eks-remedy: EC2 does not know instance type {instance_type}");
        return ExitCode::from(2);
    };
    let result = max_pods(&facts, mode);
    if json {
        let out = serde_json::json!({"facts": facts, "result": result});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("{}", result.max_pods);
    }
    ExitCode::SUCCESS
}

async fn replay(
    event: PathBuf,
    function: Option<Function>,
    dry_run: bool,
    kubeconfig: Option<PathBuf>,
) -> ExitCode {
    let text = if event.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&event)
    };
    let payload: serde_json::Value = match text
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(p) => p,
        Err(err) => {
            eprintln!("eks-remedy: {}: {err}", event.display());
            return ExitCode::from(2);
        }
    };
    let mut config = match Config::from_env() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("eks-remedy: {err}");
            return ExitCode::from(2);
        }
    };
    config.dry_run |= dry_run;

    let aws = AwsClients::from_env().await;
    let access = match kubeconfig {
        Some(path) => match ClusterAccess::from_kubeconfig(&path).await {
            Ok(a) => a,
            Err(err) => {
                eprintln!("eks-remedy: {err}");
                return ExitCode::from(2);
            }
        },
        None => ClusterAccess::eks(aws.clone()),
    };
    let result = match function.unwrap_or_else(|| Function::for_event(&payload)) {
        Function::NodeInterruption => {
            NodeInterruption::new(aws, access, config)
                .handle(&payload, None)
                .await
        }
        Function::PendingPods => {
            PendingPods::new(aws, access, config)
                .handle(&payload, None)
                .await
        }
        Function::VolumeAttach => {
            VolumeAttach::new(aws, access, config)
                .handle(&payload, None)
                .await
        }
    };
    match result {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_else(|e| e.to_string())
            );
            if result.rejected.is_empty() && result.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("eks-remedy: {err}");
            ExitCode::FAILURE
        }
    }
}
