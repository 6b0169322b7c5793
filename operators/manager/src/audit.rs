//! `berth-manager audit`: checks the cluster in KUBECONFIG once and exits
//! (see the berth-audit crate for the checks). It runs with the caller's
//! credentials, not the manager's service account: it lists nodes, pods,
//! namespaces and InplaceSets cluster-wide, which berth-manager's own role
//! does not allow (a cluster admin, or a role with those list verbs, can).
//!
//! Exit code: 0 clean (warnings allowed unless --fail-on-warning), 1 on a
//! violation, 2 when the cluster could not be read.

use std::time::Duration;

use berth_audit::{Options, Report};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Exit 1 on warnings too.
    #[arg(long)]
    fail_on_warning: bool,

    /// Seconds between two snapshots: only findings both show are reported, so that a change racing
    /// the reads (a pod created between the list of pods and the list of sets) is not one. 0: one snapshot.
    #[arg(long, default_value_t = 3)]
    settle_seconds: u64,

    /// Warn about a workload when at least this share (0..1) of its preferred affinity weight is unmet.
    #[arg(long, default_value_t = 0.5, value_parser = share)]
    soft_affinity_threshold: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Output {
    Table,
    Json,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1, such as 0.5")),
    }
}

/// Runs the audit; the process exit code.
pub async fn run(args: Args) -> i32 {
    match audit(&args).await {
        Ok(report) => {
            match args.output {
                Output::Table => print!("{}", report.table()),
                Output::Json => println!("{}", report.json()),
            }
            let failed =
                report.violations().next().is_some() || (args.fail_on_warning && report.warnings().next().is_some());
            i32::from(failed)
        }
        Err(e) => {
            eprintln!("berth-manager audit: {e:#}");
            2
        }
    }
}

async fn audit(args: &Args) -> anyhow::Result<Report> {
    let client = kube::Client::try_default().await?;
    let options = Options { soft_affinity_threshold: args.soft_affinity_threshold };
    let first = berth_audit::audit(&berth_audit::gather(&client).await?, &options);
    if args.settle_seconds == 0 || first.findings.is_empty() {
        return Ok(first);
    }
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let second = berth_audit::audit(&berth_audit::gather(&client).await?, &options);
    Ok(berth_audit::confirmed(&first, second))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Args, Command};

    #[test]
    fn the_manager_flags_still_run_the_manager_and_audit_is_a_subcommand() {
        let manager = Args::try_parse_from(["berth-manager", "--webhook-port", "9443", "--leader-elect"]).unwrap();
        assert!(manager.command.is_none());
        let audit = Args::try_parse_from(["berth-manager", "audit", "-o", "json", "--fail-on-warning"]).unwrap();
        let Some(Command::Audit(a)) = audit.command else { panic!("audit subcommand expected") };
        assert!(matches!(a.output, super::Output::Json) && a.fail_on_warning && a.settle_seconds == 3);
        let err = Args::try_parse_from(["berth-manager", "audit", "--soft-affinity-threshold", "2"]).unwrap_err();
        assert!(err.to_string().contains("not a share between 0 and 1"), "{err}");
        assert!(Args::try_parse_from(["berth-manager", "audit", "-o", "yaml"]).is_err());
    }
}
