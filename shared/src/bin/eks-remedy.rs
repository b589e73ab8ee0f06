//! `eks-remedy`: the operator CLI. `replay` runs one event through exactly the Lambda handler.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::config::Config;
use eks_remedy::interruption::NodeInterruption;

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
    /// Runs one event (EventBridge, SQS batch or SNS notification JSON) through the
    /// node-interruption handler and prints its reports as JSON.
    Replay {
        /// The event file; `-` reads standard input.
        event: PathBuf,
        /// Decide and report, change nothing (overrides EKS_REMEDY_DRY_RUN).
        #[arg(long)]
        dry_run: bool,
        /// Use this kubeconfig for any cluster instead of EKS DescribeCluster and a token.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    eks_remedy::telemetry::init();
    match Cli::parse().command {
        Command::Replay {
            event,
            dry_run,
            kubeconfig,
        } => replay(event, dry_run, kubeconfig).await,
    }
}

async fn replay(event: PathBuf, dry_run: bool, kubeconfig: Option<PathBuf>) -> ExitCode {
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
    let handler = NodeInterruption::new(aws, access, config);
    match handler.handle(&payload, None).await {
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
