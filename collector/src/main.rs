//! The `collector` command line.

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand};
use collector::{
    chain,
    config::{self, CheckArgs, RunArgs},
    daemon,
    doctor::{self, DoctorArgs},
    events_cmd::{self, EventsArgs},
    telemetry::logs::{self, LogFormat},
    trace::{self, TraceArgs, TraceStats},
};

/// Explains why containers die: kernel probes for exits, OOM kills and
/// signals, tied to pods and containers.
#[derive(Debug, Parser)]
#[command(name = "collector", version, about, propagate_version = true)]
struct Cli {
    /// The collector's own log: a level (error, warn, info, debug, trace) or per-target
    /// directives such as `info,kube=warn,collector::sinks=debug`.
    #[arg(long, global = true, env = "COLLECTOR_LOG", default_value = "warn", value_name = "FILTER")]
    log_level: String,
    /// Log lines as text or JSON; `auto` is JSON when stderr is not a terminal (a DaemonSet).
    #[arg(long, global = true, env = "COLLECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon: turn container deaths into kubelet-style Events, a local journal and metrics.
    Run(Box<RunArgs>),
    /// Stream what the kernel reports about every process on this node.
    Trace(TraceArgs),
    /// Show the events recorded on this node (reads the local journal).
    Events(EventsArgs),
    /// Check that this node gives the collector what it needs, and say how to fix what is missing.
    ///
    /// Checks capabilities, the kernel, BTF, tracefs, bpf(), cgroups, the CRI socket, and the API
    /// server with RBAC, as `collector run` would use them. Exit status: 0 if nothing failed, 1
    /// otherwise, 2 for a bad configuration.
    Doctor(DoctorArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration (file, environment) and print the effective one, or every problem.
    Check(CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = logs::init(&cli.log_level, cli.log_format) {
        return fail(&chain(&err));
    }
    match cli.command {
        Command::Trace(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => return fail(&format!("cannot start the runtime: {err}")),
            };
            match trace::run_on(&runtime, args) {
                Ok(stats) => {
                    summarize(&stats);
                    ExitCode::SUCCESS
                }
                Err(err) => fail(&chain(&err)),
            }
        }
        Command::Run(args) => {
            let (config, runtime) = match resolve_and_start(&args) {
                Ok(ready) => ready,
                Err(code) => return code,
            };
            match daemon::run_on(&runtime, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&chain(&err)),
            }
        }
        Command::Doctor(args) => {
            let (config, runtime) = match resolve_and_start(&args.run_args()) {
                Ok(ready) => ready,
                Err(code) => return code,
            };
            match doctor::doctor_on(&runtime, &config, args.format) {
                Ok(report) if report.failed() => ExitCode::FAILURE,
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => fail(&chain(&err)),
            }
        }
        Command::Events(args) => match events_cmd::run(args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => fail(&chain(&err)),
        },
        Command::Config(ConfigCommand::Check(args)) => {
            let env = |name: &str| std::env::var(name).ok();
            match config::check(&args, &env, &mut std::io::stdout(), &mut std::io::stderr()) {
                Ok(code) => ExitCode::from(code),
                Err(err) => fail(&format!("cannot write the result: {err}")),
            }
        }
    }
}

/// The trace's closing line: what it saw and what it lost.
fn summarize(stats: &TraceStats) {
    if stats.from_stream {
        let _ = writeln!(
            std::io::stderr(),
            "collector: stopped: {} records from the daemon's stream, {} filtered out (the daemon's /metrics counts \
             what the kernel lost)",
            stats.records,
            stats.filtered,
        );
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "collector: stopped: {} records, {} lost (ring buffer full), {} exits lost, {} malformed, {} filtered out, \
         {} with unreadable fields",
        stats.records,
        stats.kernel.ring_full(),
        stats.kernel.lost[collector_common::kind::EXIT as usize],
        stats.malformed,
        stats.filtered,
        stats.kernel.read_failed,
    );
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "collector: {message}");
    ExitCode::FAILURE
}

/// The effective configuration (flags, environment, file) and a runtime for it, or the exit
/// code after every configuration problem is printed.
fn resolve_and_start(args: &RunArgs) -> Result<(config::RunConfig, tokio::runtime::Runtime), ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    let config = config::resolve(args, &env).map_err(|problems| {
        for problem in &problems {
            let _ = writeln!(std::io::stderr(), "collector: {problem}");
        }
        ExitCode::from(config::EXIT_PROBLEMS)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| fail(&format!("cannot start the runtime: {err}")))?;
    Ok((config, runtime))
}
