//! `collector doctor`: what this node and the collector's security context give
//! it, one check per need, and for each problem the fix.
//!
//! `collector run` makes the same checks before it loads the probes, logs one
//! line per problem, and stops when a check it cannot run without fails (the
//! ones that carry a [`DoctorError`]: capabilities, BTF, tracefs, bpf()), so a
//! DaemonSet without CAP_PERFMON never becomes ready and its log names the
//! capability.
//!
//! The checks follow the data's path: the kernel side (`host`: capabilities,
//! kernel, BTF, tracefs, the bpf() syscall), the cgroup tree (`cgroups`), then
//! where names come from (`runtime`: the CRI socket; `api`: the API server and
//! what RBAC lets the collector do).

mod api;
mod cgroups;
mod host;
mod runtime;

use std::{fmt::Write as _, io};

use clap::{Args, ValueEnum};
use serde::Serialize;
use thiserror::Error;

pub use self::cgroups::CgroupMode;
use crate::{
    config::{ConfigFileArgs, RunArgs, RunConfig, SourceArgs},
    escape::scrub,
    metadata,
    probe::{btf::BtfError, preflight::PreflightError, tracefs::TracefsError},
    sinks::kubernetes::{self, Cluster},
};

/// Why `collector run` cannot start: the first failed check it cannot run
/// without. The texts are those `collector trace` gives for the same problem.
#[derive(Debug, Error)]
pub enum DoctorError {
    /// The process may not use BPF, or the kernel has no BTF.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// Kernel BTF is there but cannot be read.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// tracefs cannot be found or mounted, or a tracepoint's format is unreadable.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The kernel has no bpf() syscall.
    #[error("the kernel has no BPF syscall (it needs CONFIG_BPF_SYSCALL=y): {0}")]
    NoBpfSyscall(#[source] io::Error),
    /// bpf() failed for another reason.
    #[error("the bpf() syscall failed: {0}")]
    Bpf(#[source] io::Error),
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Write(#[source] io::Error),
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// What the collector needs is there.
    Ok,
    /// The collector runs, with less (no container names, no events to the API server),
    /// or the check could not tell.
    Warn,
    /// Something the collector needs is missing.
    Fail,
}

/// One check's result.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Which check: `capabilities`, `kernel`, `btf`, `tracefs`, `bpf`, `cgroups`, `cri`, `api`, `rbac`.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found; for a problem, what is missing and what fails without it.
    pub detail: String,
    /// How to fix a problem; none when the check passed.
    pub fix: Option<String>,
    /// Why the daemon cannot start, for a failed check it cannot run without.
    #[serde(skip)]
    blocker: Option<DoctorError>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, status: Status::Ok, detail: detail.into(), fix: None, blocker: None }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()), blocker: None }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()), blocker: None }
    }

    /// Marks a failure the daemon cannot run with.
    fn blocking(mut self, cause: impl Into<DoctorError>) -> Self {
        self.blocker = Some(cause.into());
        self
    }

    /// Whether `collector run` stops on this result.
    pub const fn blocks_startup(&self) -> bool {
        self.blocker.is_some()
    }

    /// The line `collector run` logs for a problem: `NAME: DETAIL; fix: FIX`.
    pub fn problem_line(&self) -> String {
        let mut line = format!("{}: {}", self.name, self.detail);
        if let Some(fix) = &self.fix {
            let _ = write!(line, "; fix: {fix}");
        }
        line
    }
}

/// Every check, and what they found out about the node.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Whether no check failed.
    pub ok: bool,
    /// The kernel release (`uname -r`), if readable.
    pub kernel: Option<String>,
    /// How cgroups are mounted, if the mount table was readable.
    pub cgroups: Option<CgroupMode>,
    /// The container runtime that answered on the CRI socket (`containerd 1.6.20~ds1`).
    pub runtime: Option<String>,
    /// The checks, kernel side first.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether a check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|check| check.status == Status::Fail)
    }

    /// Logs one line per problem (error for a failure, warning otherwise) and
    /// what passed at info level.
    pub fn log(&self) {
        for check in &self.checks {
            match check.status {
                Status::Ok => tracing::info!("{}: {}", check.name, check.detail),
                Status::Warn => tracing::warn!("{}", check.problem_line()),
                Status::Fail => tracing::error!("{}", check.problem_line()),
            }
        }
    }

    /// Why the daemon cannot start, if a check it cannot run without failed.
    pub fn into_blocker(self) -> Option<DoctorError> {
        self.checks.into_iter().find_map(|check| check.blocker)
    }

    /// One line per check (`ok   capabilities  CAP_BPF, CAP_PERFMON`, or
    /// `FAIL NAME  DETAIL  fix: FIX`), then the kernel, cgroup mode and runtime.
    pub fn write_text(&self, out: &mut impl io::Write) -> io::Result<()> {
        let width = self.checks.iter().map(|check| check.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            write!(out, "{status:<4} {:<width$}  {}", check.name, scrub(&check.detail))?;
            if let Some(fix) = &check.fix {
                write!(out, "  fix: {}", scrub(fix))?;
            }
            writeln!(out)?;
        }
        let count = |status| self.checks.iter().filter(|check| check.status == status).count();
        let (failed, warnings) = (count(Status::Fail), count(Status::Warn));
        writeln!(out)?;
        writeln!(out, "kernel   {}", scrub(self.kernel.as_deref().unwrap_or("unknown")))?;
        writeln!(out, "cgroups  {}", self.cgroups.map_or("unknown", CgroupMode::name))?;
        writeln!(out, "runtime  {}", scrub(self.runtime.as_deref().unwrap_or("none")))?;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        writeln!(out, "{failed} failed, {warnings} warning{}", plural(warnings))
    }

    /// The report as one JSON object.
    pub fn write_json(&self, out: &mut impl io::Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self).map_err(io::Error::other)?;
        writeln!(out)
    }
}

/// The API server to check.
pub enum ApiTarget<'a> {
    /// A client built from `--kubeconfig` or the in-cluster service account.
    Client(&'a kube::Client),
    /// The configuration names a cluster but no client could be built from it.
    Unusable(&'a kubernetes::Error),
    /// No cluster is configured: one warning says so.
    Absent,
    /// No API checks (the daemon without a cluster).
    Skip,
}

/// What to check besides the node itself.
pub struct Inputs<'a> {
    /// The CRI socket setting.
    pub cri: metadata::CriSocket,
    /// The API server.
    pub api: ApiTarget<'a>,
    /// Whether the `btf` check parses all of the kernel's BTF to say how the exit probe will
    /// read task fields (`collector doctor`). The daemon's start-up check only reads it: loading
    /// the probes parses it anyway, and a second parse cost an emulated test VM a second.
    pub parse_btf: bool,
}

/// Runs every check, in the data's order.
pub async fn check(inputs: &Inputs<'_>) -> Report {
    let mut report = Report::default();
    let host = host::check(inputs.parse_btf);
    report.kernel = host.release;
    report.checks.extend(host.checks);
    let cgroups = cgroups::check();
    report.cgroups = cgroups.mode;
    report.checks.push(cgroups.check);
    let (cri, runtime) = runtime::check(&inputs.cri).await;
    report.checks.push(cri);
    report.runtime = runtime;
    match inputs.api {
        ApiTarget::Client(client) => report.checks.extend(api::check(client).await),
        ApiTarget::Unusable(err) => report.checks.push(api::unusable(err)),
        ApiTarget::Absent => report.checks.push(api::absent()),
        ApiTarget::Skip => {}
    }
    report.ok = !report.failed();
    report
}

/// The report's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One line per check, then the kernel, cgroup mode and runtime.
    #[default]
    Text,
    /// One JSON object with an array of checks.
    Json,
}

/// Options of `collector doctor`: those of `collector run` that say where to
/// look, read the same way (flags, then `COLLECTOR_*` variables, then the file).
#[derive(Args, Clone, Debug, Default)]
pub struct DoctorArgs {
    /// The configuration file.
    #[command(flatten)]
    pub file: ConfigFileArgs,
    /// The cluster and the container runtime.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// `text`: one line per check; `json`: one object with an array of checks.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
}

impl DoctorArgs {
    /// The `collector run` options these stand for, to resolve the configuration as `run` would.
    pub fn run_args(&self) -> RunArgs {
        RunArgs { file: self.file.clone(), sources: self.sources.clone(), ..RunArgs::default() }
    }
}

/// `collector doctor` on `runtime`, the report on stdout; a plain function for the same reason
/// as `daemon::run_on`.
pub fn doctor_on(
    runtime: &tokio::runtime::Runtime,
    config: &RunConfig,
    format: ReportFormat,
) -> Result<Report, DoctorError> {
    runtime.block_on(doctor(config, format, &mut io::stdout()))
}

/// `collector doctor`: checks what `config` would use and writes the report to `out`.
pub async fn doctor(config: &RunConfig, format: ReportFormat, out: &mut impl io::Write) -> Result<Report, DoctorError> {
    let cluster = kubernetes::connect(config.kubeconfig.as_deref()).await;
    let api = match &cluster {
        Ok(Cluster::Api(client)) => ApiTarget::Client(client),
        Ok(Cluster::NoCluster) => ApiTarget::Absent,
        Err(err) => ApiTarget::Unusable(err),
    };
    let report = check(&Inputs { cri: config.cri_socket.clone(), api, parse_btf: true }).await;
    match format {
        ReportFormat::Text => report.write_text(out),
        ReportFormat::Json => report.write_json(out),
    }
    .map_err(DoctorError::Write)?;
    Ok(report)
}

/// `err` and each of its sources, joined by `: `; a source whose text the one
/// before it already shows (`"...: {0}"` messages) is left out.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let this = cause.to_string();
        if !last.contains(&this) {
            let _ = write!(text, ": {this}");
        }
        last = this;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut report = Report {
            ok: false,
            kernel: Some("6.18.44".to_owned()),
            cgroups: Some(CgroupMode::Hybrid),
            runtime: None,
            checks: vec![
                Check::ok("capabilities", "CAP_BPF, CAP_PERFMON"),
                Check::warn("cri", "no CRI socket", "mount it"),
                Check::fail("bpf", "bpf() refused\n(EPERM)", "add CAP_BPF").blocking(PreflightError::NotPermitted),
            ],
        };
        report.ok = !report.failed();
        report
    }

    #[test]
    fn text_has_one_escaped_line_per_check_then_the_summary() {
        let mut out = Vec::new();
        sample().write_text(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok   capabilities  CAP_BPF, CAP_PERFMON\n\
             WARN cri           no CRI socket  fix: mount it\n\
             FAIL bpf           bpf() refused\\x0a(EPERM)  fix: add CAP_BPF\n\
             \n\
             kernel   6.18.44\n\
             cgroups  hybrid\n\
             runtime  none\n\
             1 failed, 1 warning\n"
        );
    }

    #[test]
    fn json_is_one_object_with_an_array_of_checks() {
        let mut out = Vec::new();
        sample().write_json(&mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "ok": false, "kernel": "6.18.44", "cgroups": "hybrid", "runtime": null,
                "checks": [
                    {"name": "capabilities", "status": "ok", "detail": "CAP_BPF, CAP_PERFMON", "fix": null},
                    {"name": "cri", "status": "warn", "detail": "no CRI socket", "fix": "mount it"},
                    {"name": "bpf", "status": "fail", "detail": "bpf() refused\n(EPERM)", "fix": "add CAP_BPF"},
                ],
            })
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    }

    #[test]
    fn problems_are_logged_as_name_detail_and_fix() {
        let report = sample();
        assert_eq!(report.checks[1].problem_line(), "cri: no CRI socket; fix: mount it");
        assert!(!report.checks[1].blocks_startup());
        assert!(report.checks[2].blocks_startup());
    }

    #[test]
    fn the_first_blocking_failure_keeps_the_existing_error_text() {
        assert_eq!(
            sample().into_blocker().map(|err| err.to_string()).as_deref(),
            Some("not permitted to load BPF programs: run as root, or grant CAP_BPF and CAP_PERFMON")
        );
        assert!(Report::default().into_blocker().is_none());
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        #[derive(Debug, Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] io::Error);
        #[derive(Debug, Error)]
        #[error("cannot connect")]
        struct Hides(#[source] Repeats);
        let err = Hides(Repeats(io::Error::from_raw_os_error(libc::ECONNREFUSED)));
        assert_eq!(chain(&err), "cannot connect: outer: Connection refused (os error 111)");
    }
}
