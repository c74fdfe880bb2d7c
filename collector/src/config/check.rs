//! `collector config check [FILE]`: validate a configuration file and print
//! the configuration `collector run` would use with no flags.

use std::{io, path::PathBuf};

use clap::Args;

use super::{ConfigFileArgs, RunArgs, resolve};

/// Options of `collector config check`.
#[derive(Args, Clone, Debug, Default)]
pub struct CheckArgs {
    /// The file to check [default: $COLLECTOR_CONFIG; without either, the
    /// environment and defaults alone are checked].
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// The exit status when the configuration has problems.
pub const EXIT_PROBLEMS: u8 = 2;

/// Checks the file (then the environment, as `collector run` would apply it)
/// and writes the effective configuration as TOML to `out`, or every problem,
/// one per line, to `err`. Returns the exit status: 0, or [`EXIT_PROBLEMS`].
pub fn check(
    args: &CheckArgs,
    env: &impl Fn(&str) -> Option<String>,
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> io::Result<u8> {
    let run_args = RunArgs { file: ConfigFileArgs { config: args.file.clone() }, ..RunArgs::default() };
    match resolve(&run_args, env) {
        Ok(config) => match toml::to_string(&config) {
            Ok(text) => {
                out.write_all(text.as_bytes())?;
                Ok(0)
            }
            Err(source) => Err(io::Error::other(source)),
        },
        Err(problems) => {
            for problem in &problems {
                writeln!(err, "{problem}")?;
            }
            let count = problems.len();
            let noun = if count == 1 { "problem" } else { "problems" };
            writeln!(err, "{count} {noun} in the configuration")?;
            Ok(EXIT_PROBLEMS)
        }
    }
}
