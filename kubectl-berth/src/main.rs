//! `kubectl-berth`: berth's kubectl plugin. Each command reads (and at most
//! patches) the objects berth's controllers own, through the API crate's
//! types, keys and state machines and the controllers' own planning functions.

mod cli;
mod client;
mod describe;
mod error;
mod plan;
mod resize;
mod rollout;
mod table;

use clap::Parser;
use cli::{Cli, Command, Rollout};
use error::{Error, Exit, Result};
use rollout::control::Verb;

async fn run(cli: Cli) -> Result<Exit> {
    let (client, ns) = client::connect(&cli.global).await?;
    let ns = ns.as_str();
    match cli.command {
        Command::Rollout(r) => match r {
            Rollout::Status { name, timeout } => rollout::status::run(client, ns, &name, timeout).await,
            Rollout::Pause { name } => rollout::control::run(client, ns, &name, Verb::Pause).await,
            Rollout::Resume { name } => rollout::control::run(client, ns, &name, Verb::Resume).await,
            Rollout::Approve { name } => rollout::control::run(client, ns, &name, Verb::Approve).await,
            Rollout::History { name, revision, output } => {
                rollout::history::history(client, ns, &name, revision, output).await
            }
            Rollout::Undo { name, to_revision } => rollout::history::undo(client, ns, &name, to_revision).await,
        },
        Command::Resize(a) => resize::run(client, ns, &a.request, !a.no_wait, a.timeout).await,
        Command::Describe { kind, name, output } => describe::run(client, ns, kind, &name, output).await,
        Command::Plan(cli::Plan::Inplaceset { name, file, image, output }) => {
            plan::inplaceset(client, ns, &name, file.as_deref(), &image, output).await
        }
        Command::Plan(cli::Plan::Resize { request, output }) => plan::resize(client, ns, &request, output).await,
    }
}

/// Help and version print to stdout and exit 0; any other parse error is bad input (3).
fn parse() -> std::result::Result<Cli, Exit> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { Exit::Error } else { Exit::Success }
    })
}

fn main() {
    let code = match parse() {
        Err(exit) => exit,
        Ok(cli) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime.map_err(|e| Error::Invalid(format!("starting the async runtime: {e}"))) {
                Ok(rt) => rt.block_on(run(cli)).unwrap_or_else(|e| {
                    eprintln!("error: {e}");
                    Exit::Error
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    Exit::Error
                }
            }
        }
    };
    std::process::exit(code as i32);
}
