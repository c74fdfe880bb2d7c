//! Where the exit probe's time goes: `perf record` samples every CPU while the fork loop runs
//! with the collector attached, and each sample taken inside `sched_process_exit`'s program (its
//! own JIT code, or a kernel helper it called: the callchain runs through the program) is
//! counted under the part of the work it belongs to; so is each taken in the tracepoint's own
//! work around the program (a classic tracepoint's record, the call into BPF), which the
//! kernel's BPF statistics do not see. Sampling is by `cpu-clock`, which works
//! where hardware counters do not (a VM); it slows what it measures, so the shares are what this
//! reports, not nanoseconds.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, Plan,
    phases::{secs, strings},
    proc::{Collector, Stdout},
    report::{Row, thousands},
};

/// The exit program as perf names its JIT image: `bpf_prog_<tag>_sched_process_exit`.
const PROGRAM_SUFFIX: &str = "_sched_process_exit";

/// Each part of the work, by the kernel symbols its samples land in (the sample's own frame).
const PARTS: &[(&str, &[&str])] = &[
    (
        "pending-signal lookups and removal (`SIGNALS`, an LRU hash map)",
        &["lookup_nulls_elem_raw", "__htab_map_lookup_elem", "htab_map_hash", "htab_lru_map_delete_elem", "htab_lru"],
    ),
    (
        "ring buffer reserve and submit",
        &[
            "bpf_ringbuf_reserve",
            "__bpf_ringbuf_reserve",
            "bpf_ringbuf_submit",
            "bpf_ringbuf_commit",
            "bpf_ringbuf_query",
        ],
    ),
    (
        "waking the reader (irq_work: an APIC write, a VM exit here)",
        &["irq_work", "native_write_msr", "native_apic_msr_write", "x2apic"],
    ),
    ("field reads (`bpf_probe_read_kernel`)", &["bpf_probe_read_kernel", "copy_from_kernel_nofault"]),
    ("the boot clock (`bpf_ktime_get_boot_ns`)", &["ktime_get", "read_tsc", "kvm_clock"]),
    ("the cgroup id (`bpf_get_current_cgroup_id`)", &["bpf_get_current_cgroup_id", "cgroup_id"]),
    ("zeroing the record (the program's `memset`)", &["_memset"]),
    ("the program's own instructions", &[PROGRAM_SUFFIX]),
];

/// The kernel's work around the program: what it costs to have a program there at all.
const AROUND: &str = "the tracepoint around the program (its record, the call into BPF)";

/// Frames of the tracepoint calling the exit program: a classic tracepoint's (which builds the
/// record first), or a raw one's from `do_exit`.
fn under_tracepoint(frames: &[&str]) -> bool {
    frames.iter().any(|frame| frame.starts_with("perf_trace_sched_process_exit"))
        || (frames.contains(&"bpf_trace_run2") && frames.contains(&"do_exit"))
}

/// The part a sample's own frame belongs to; `other` when none matches.
fn part_of(leaf: &str) -> &'static str {
    // The program's own frame is matched last: helpers inside it are named first.
    PARTS
        .iter()
        .find(|(_, symbols)| symbols.iter().any(|symbol| leaf.contains(symbol)))
        .map_or("other kernel code called from the program", |(part, _)| part)
}

/// Samples inside the exit program and around it, by part, from `perf script -F ip,sym` output: blank-line
/// separated samples, each a callchain from the sampled frame outwards.
fn tally(script: &str) -> BTreeMap<&'static str, u64> {
    let mut parts = BTreeMap::new();
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample.lines().filter_map(|line| line.split_whitespace().nth(1)).collect();
        let in_program = frames.iter().any(|frame| frame.starts_with("bpf_prog_") && frame.ends_with(PROGRAM_SUFFIX));
        if let (true, Some(leaf)) = (in_program, frames.first()) {
            *parts.entry(part_of(leaf)).or_insert(0) += 1;
        } else if under_tracepoint(&frames) {
            *parts.entry(AROUND).or_insert(0) += 1;
        }
    }
    parts
}

/// The rows: each part's share of the samples inside the exit program, at the machine's maximum
/// exit rate; one row saying why when perf is missing or refuses.
pub(super) fn exit_breakdown(bins: &Bins, plan: &Plan, workers: usize) -> Result<Vec<Row>> {
    eprintln!("xtask: bench: where the exit probe's time goes (perf record)");
    let measure = "`sched_process_exit`: share of its samples by part of the work (perf, cpu-clock)";
    let Some(perf) = crate::command::which("perf") else {
        return Ok(vec![Row::new(measure, "not measured: perf is not installed (Debian: linux-perf)", "")]);
    };
    let data = std::env::temp_dir().join(format!("collector-bench-{}.perf", std::process::id()));
    let collector = Collector::start(&bins.collector, &["--format", "json"], Stdout::Null)?;
    let seg = secs(plan.segment * 2.0);
    let args = strings(&["fork", "--secs", &seg, "--workers", &workers.to_string()]);
    let record = Command::new(&perf)
        .args(["record", "-q", "-a", "-g", "-F", "10000", "-e", "cpu-clock", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&bins.forkloop)
        .args(&args)
        .output()
        .context("cannot run perf record")?;
    collector.stop()?;
    if !record.status.success() {
        let _ = std::fs::remove_file(&data);
        let why = String::from_utf8_lossy(&record.stderr).lines().next().unwrap_or_default().to_owned();
        return Ok(vec![Row::new(measure, format!("not measured: perf record failed: {why}"), "")]);
    }
    let script = Command::new(&perf).args(["script", "-F", "ip,sym", "-i"]).arg(&data).output();
    let _ = std::fs::remove_file(&data);
    let script = script.context("cannot run perf script")?;
    if !script.status.success() {
        bail!("perf script failed: {}", String::from_utf8_lossy(&script.stderr));
    }
    let parts = tally(&String::from_utf8_lossy(&script.stdout));
    let total: u64 = parts.values().sum();
    if total == 0 {
        return Ok(vec![Row::new(measure, "not measured: no sample landed in the exit program", "")]);
    }
    // forkloop's own line, passed through by perf: how many exits the samples are of.
    let stdout = String::from_utf8_lossy(&record.stdout);
    let exits = serde_json::from_str::<serde_json::Value>(stdout.trim())
        .ok()
        .and_then(|line| line.get("ops").and_then(serde_json::Value::as_u64))
        .with_context(|| format!("forkloop under perf said {stdout}"))?;
    let mut sorted: Vec<(&str, u64)> = parts.into_iter().collect();
    sorted.sort_by_key(|&(_, samples)| std::cmp::Reverse(samples));
    let command = format!(
        "target/release/collector trace --format json > /dev/null & perf record -a -g -F 10000 -e cpu-clock -- \
         target/release/forkloop {}; perf script -F ip,sym",
        args.join(" ")
    );
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let per_1000 = |samples: u64| samples as f64 * 1000.0 / exits.max(1) as f64;
    let program: u64 = sorted.iter().filter(|(part, _)| *part != AROUND).map(|(_, samples)| samples).sum();
    let mut rows = vec![
        Row::new(
            "`sched_process_exit`: samples per 1,000 exits, in the program and around it (perf, 10 kHz a CPU)",
            format!(
                "{:.2} in all: {:.2} in the program and its helpers, {:.2} around it ({} exits)",
                per_1000(total),
                per_1000(program),
                per_1000(total - program),
                thousands(exits as f64)
            ),
            "what the kernel spends on the probe per exit, BPF statistics' blind spot included".to_owned(),
        )
        .command(command.clone()),
    ];
    rows.extend(sorted.into_iter().map(|(part, samples)| {
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        let share = samples as f64 / total as f64 * 100.0;
        Row::new(
            format!("`sched_process_exit` time in {part}"),
            format!("{share:.1} % ({} of {} samples)", thousands(samples as f64), thousands(total as f64)),
            "share of the samples in the exit program (helpers included) and around it; fork+exit at the maximum rate"
                .to_owned(),
        )
        .command(command.clone())
    }));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_count_under_their_part_only_inside_the_exit_program_or_its_tracepoint() {
        let script = "\
            ffffffff8150 lookup_nulls_elem_raw\n ffffffffc0 bpf_prog_b0a5fbfa96f63195_sched_process_exit\n ffff81 perf_trace_run_bpf_submit\n\n\
            ffffffffc0 bpf_prog_b0a5fbfa96f63195_sched_process_exit\n ffff81 trace_call_bpf\n\n\
            ffff8181 native_write_msr\n ffff8182 native_apic_msr_write\n ffff8183 irq_work_queue\n ffff8184 bpf_ringbuf_submit\n ffffffffc0 bpf_prog_b0a5fbfa96f63195_sched_process_exit\n\n\
            ffff8185 ktime_get_mono_fast_ns\n ffffffffc1 bpf_prog_0000000000000000_signal_generate\n\n\
            ffff8186 do_exit\n ffff8187 __x64_sys_exit_group\n\n\
            ffff8188 some_helper\n ffffffffc0 bpf_prog_b0a5fbfa96f63195_sched_process_exit\n\n\
            ffff8189 perf_trace_buf_alloc\n ffff818a perf_trace_sched_process_exit\n ffff8186 do_exit\n\n\
            ffff818b bpf_trace_run2\n ffff8186 do_exit\n\n\
            ffff818b bpf_trace_run2\n ffff818c sched_process_hang_caller\n";
        let parts = tally(script);
        let expected: BTreeMap<&str, u64> = [
            ("pending-signal lookups and removal (`SIGNALS`, an LRU hash map)", 1),
            ("the program's own instructions", 1),
            ("waking the reader (irq_work: an APIC write, a VM exit here)", 1),
            ("other kernel code called from the program", 1),
            (AROUND, 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(parts, expected);
    }
}
