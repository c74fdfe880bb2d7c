//! The `collector` command line.

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand};
use collector::trace::{self, TraceArgs};

/// Explains why containers die: kernel probes for exits, OOM kills and
/// signals, tied to pods and containers.
#[derive(Debug, Parser)]
#[command(name = "collector", version, about, propagate_version = true)]
struct Cli {
    /// Log level for the collector's own diagnostics (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "COLLECTOR_LOG", default_value = "warn")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream what the kernel reports about every process on this node.
    Trace(TraceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    match cli.command {
        Command::Trace(args) => match runtime.block_on(trace::run(args)) {
            Ok(stats) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "collector: stopped: {} records, {} lost (ring buffer full), {} malformed, {} filtered out, \
                     {} with unreadable fields",
                    stats.records,
                    stats.kernel.ring_full,
                    stats.malformed,
                    stats.filtered,
                    stats.kernel.read_failed,
                );
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err.to_string()),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "collector: {message}");
    ExitCode::FAILURE
}
