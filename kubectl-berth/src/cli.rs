//! Command line: `kubectl berth <command>` (kubectl finds `kubectl-berth` on PATH).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-berth",
    bin_name = "kubectl berth",
    version,
    about = "berth's kubectl plugin: InplaceSet rollouts, in-place pod resizes, berth's state machines, dry-run plans",
    after_help = "Exit codes: 0 done (rollout complete, resize Applied, plan fits); 1 failed (rollout failed or \
                  stalled, resize Rejected or Failed, plan does not fit); 2 --timeout reached; 3 bad input or API error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The kubectl flags every command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Path to the kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage the rollout of an InplaceSet.
    #[command(subcommand)]
    Rollout(Rollout),
    /// Submit an in-place resize of a pod's container and follow it to Applied, Rejected or Failed.
    Resize(ResizeArgs),
    /// Show berth's state machines for an InplaceSet or a pod.
    Describe {
        #[arg(value_enum)]
        kind: Kind,
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Dry run: what a change would do, changing nothing.
    #[command(subcommand)]
    Plan(Plan),
}

#[derive(Subcommand, Debug)]
pub enum Rollout {
    /// Follow the rollout until it completes (exit 0) or fails (exit 1).
    Status {
        name: String,
        /// Give up after this long (exit 2): e.g. 90s, 10m, 1h; 0 waits forever.
        #[arg(long, value_parser = parse_duration, default_value = "0")]
        timeout: Duration,
    },
    /// Stop the rollout where it is (spec.updateStrategy.paused).
    Pause { name: String },
    /// Unpause, and let a batch held by a manual pause go on (raises rolloutPlan.approvedBatches).
    Resume { name: String },
    /// Only approve the next batch after a manual batch pause.
    Approve { name: String },
    /// List the revisions (ControllerRevisions); with --revision, show one's template.
    History {
        name: String,
        #[arg(long)]
        revision: Option<i64>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        name: String,
        #[arg(long)]
        to_revision: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Plan {
    /// Which pods a new template would change, in which batch, in place or by recreation, and node headroom.
    #[command(alias = "ips")]
    Inplaceset {
        name: String,
        /// The new InplaceSet (YAML or JSON; its spec is planned). `-` reads stdin.
        #[arg(short = 'f', long = "filename", conflicts_with = "image")]
        file: Option<String>,
        /// Set a container's image instead: CONTAINER=IMAGE (repeatable).
        #[arg(long, value_parser = parse_image)]
        image: Vec<(String, String)>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Would the feasibility check accept this resize? With the numbers.
    Resize {
        #[command(flatten)]
        request: ResizeRequestArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A pod and the resources to give one of its containers.
#[derive(Args, Debug, Clone, Default)]
pub struct ResizeRequestArgs {
    /// The pod.
    pub pod: String,
    /// The container to resize (default: the pod's only container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// New CPU request, e.g. 500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// New memory request, e.g. 256Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// New CPU limit.
    #[arg(long)]
    pub limits_cpu: Option<String>,
    /// New memory limit.
    #[arg(long)]
    pub limits_memory: Option<String>,
    /// Pin the pod to this many exclusive CPUs.
    #[arg(long)]
    pub exclusive_cpus: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    #[command(flatten)]
    pub request: ResizeRequestArgs,
    /// Submit and return without following the request.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following after this long (exit 2): e.g. 90s, 5m; 0 waits forever.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    #[value(alias = "ips", alias = "inplacesets")]
    Inplaceset,
    #[value(alias = "pods", alias = "po")]
    Pod,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// `90s`, `10m`, `1h`, `1h30m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration; use e.g. 90s, 10m, 1h30m or a number of seconds");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// `CONTAINER=IMAGE`.
pub fn parse_image(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((c, i)) if !c.is_empty() && !i.is_empty() => Ok((c.to_string(), i.to_string())),
        _ => Err(format!("{s:?}: expected CONTAINER=IMAGE, e.g. app=example/web:2.0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_kubectl_style() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "m", "10x", "1.5m", "10m5", "-1"] {
            assert!(parse_duration(bad).unwrap_err().contains("is not a duration"), "{bad}");
        }
    }

    #[test]
    fn images_are_container_equals_image() {
        assert_eq!(parse_image("app=web:2"), Ok(("app".into(), "web:2".into())));
        assert!(parse_image("web:2").unwrap_err().contains("CONTAINER=IMAGE"));
        assert!(parse_image("=web:2").is_err());
    }

    #[test]
    fn the_command_line_parses_with_kubectl_flags_anywhere() {
        let cli = Cli::try_parse_from(["kubectl-berth", "rollout", "status", "web", "-n", "prod", "--timeout", "2m"])
            .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("prod"));
        let Command::Rollout(Rollout::Status { name, timeout }) = cli.command else { panic!() };
        assert_eq!((name.as_str(), timeout), ("web", Duration::from_secs(120)));
        let cli = Cli::try_parse_from(["kubectl-berth", "--context", "c1", "describe", "ips", "web"]).unwrap();
        assert!(matches!(cli.command, Command::Describe { kind: Kind::Inplaceset, .. }));
        assert_eq!(cli.global.context.as_deref(), Some("c1"));
        let err = Cli::try_parse_from(["kubectl-berth", "plan", "inplaceset", "web", "-f", "x.yaml", "--image", "a=b"])
            .unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }
}
