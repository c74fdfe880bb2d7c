//! Kernel log lines to node problems, with node-problem-detector's kernel-monitor rules.
//!
//! NPD's rules are copied unchanged (reason, pattern, temporary or permanent, condition) from
//! kubernetes/node-problem-detector at commit 6632ca67148f7a23df9cdbd98d9e89b388561a3a: `config/kernel-monitor.json`,
//! and `config/readonly-monitor.json`, where NPD moved its `ReadonlyFilesystem` rule in 2024 (ee955f91). Rules NPD
//! lacks (lockups, RCU stalls, oopses as current kernels print them) are ours, marked `from_npd: false`.
//!
//! How NPD matches (`pkg/systemlogmonitor/log_buffer.go`, `CompilePattern` and `Match`): it appends `\z` to the pattern
//! and searches the buffered lines joined with `\n`. So a pattern is NOT anchored at the start (the hung-task line
//! reads `INFO: task ...`, the rule `task ...`; most lines carry a `watchdog: ` or `rcu: ` prefix) but must run to the
//! end of the newest line. Its kmsg watcher hands over `strings.TrimSpace(message)`. We do the same, one line at a
//! time: NPD's buffer would also let a pattern span lines, which none of the rules here does.
//!
//! Go's `\d`, `\w`, `\s` and `\b` are ASCII; so are ours: the rules are compiled with Unicode off (`(?-u)`) and
//! matched against the line's bytes. That is NPD's meaning, and it keeps the compiled set small (Unicode classes
//! cost about 2 MiB of memory here).

use std::sync::OnceLock;

use regex::bytes::RegexSet;

/// Whether a problem is an event only, or also sets a node condition until it is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// An Event only (NPD's `"type": "temporary"`).
    Temporary,
    /// An Event and a node condition set to True (NPD's `"type": "permanent"`).
    Permanent,
}

/// One rule: a pattern and what a match means.
#[derive(Debug)]
pub struct Rule {
    /// Temporary (event) or permanent (condition).
    pub severity: Severity,
    /// The Event's reason, spelled as NPD spells it.
    pub reason: &'static str,
    /// The node condition a permanent rule sets to True (`KernelDeadlock`, `ReadonlyFilesystem`); None if temporary.
    pub condition: Option<&'static str>,
    /// Whether the rule is NPD's own (false: ours).
    pub from_npd: bool,
    /// The regular expression as NPD writes it: it may start anywhere in the line and must match to the line's end.
    pub pattern: &'static str,
}

/// A node condition NPD's kernel monitor owns, with the reason and message it has while False.
#[derive(Debug)]
pub struct ConditionDefault {
    /// The condition type.
    pub condition: &'static str,
    /// Its reason while False.
    pub reason: &'static str,
    /// Its message while False.
    pub message: &'static str,
}

/// The conditions, as NPD's kernel-monitor.json (and readonly-monitor.json, the last one) declare them.
pub const CONDITIONS: &[ConditionDefault] = &[
    ConditionDefault { condition: "KernelDeadlock", reason: "KernelHasNoDeadlock", message: "kernel has no deadlock" },
    ConditionDefault { condition: "XfsShutdown", reason: "XfsHasNotShutDown", message: "XFS has not shutdown" },
    ConditionDefault {
        condition: "CperHardwareErrorFatal",
        reason: "CperHardwareHasNoFatalError",
        message: "UEFI CPER has no fatal error",
    },
    ConditionDefault {
        condition: "ReadonlyFilesystem",
        reason: "FilesystemIsNotReadOnly",
        message: "Filesystem is not read-only",
    },
];

const fn npd_temporary(reason: &'static str, pattern: &'static str) -> Rule {
    Rule { severity: Severity::Temporary, reason, condition: None, from_npd: true, pattern }
}

const fn npd_permanent(condition: &'static str, reason: &'static str, pattern: &'static str) -> Rule {
    Rule { severity: Severity::Permanent, reason, condition: Some(condition), from_npd: true, pattern }
}

const fn ours(reason: &'static str, pattern: &'static str) -> Rule {
    Rule { severity: Severity::Temporary, reason, condition: None, from_npd: false, pattern }
}

/// NPD's rules in kernel-monitor.json's order, then readonly-monitor.json's, then ours; the first match wins.
///
/// NPD's `OOMKilling` rule is left out: the agent reports OOM kills from its eBPF probes, with the cgroup and pod,
/// so the log line would only report the same kill twice. NPD's old `AUFSUmountHung` rule is not here either: NPD
/// removed it in 2021 (fe09e416).
const RULES: &[Rule] = &[
    // Moved ahead of TaskHung, which matches every line this one does. NPD tries every rule on every line and reports
    // both (a TaskHung event and the KernelDeadlock condition); we return one rule, and the condition must not be lost.
    npd_permanent("KernelDeadlock", "DockerHung", r"task docker:\w+ blocked for more than \w+ seconds\."),
    npd_temporary("TaskHung", r"task [\S ]+:\w+ blocked for more than \w+ seconds\."),
    npd_temporary("UnregisterNetDevice", r"unregister_netdevice: waiting for \w+ to become free. Usage count = \d+"),
    npd_temporary("KernelOops", r"BUG: unable to handle kernel NULL pointer dereference at .*"),
    npd_temporary("KernelOops", r"divide error: 0000 \[#\d+\] SMP"),
    npd_temporary("Ext4Error", r"EXT4-fs error .*"),
    npd_temporary("Ext4Warning", r"EXT4-fs warning .*"),
    npd_temporary("IOError", r"Buffer I/O error .*"),
    npd_permanent("XfsShutdown", "XfsHasShutdown", r"XFS .* Shutting down filesystem.?"),
    npd_temporary("MemoryReadError", r"CE memory read error .*"),
    npd_temporary("CperHardwareErrorCorrected", r".*\[Hardware Error\]: event severity: corrected$"),
    npd_temporary("CperHardwareErrorRecoverable", r".*\[Hardware Error\]: event severity: recoverable$"),
    npd_permanent("CperHardwareErrorFatal", "CperHardwareErrorFatal", r".*\[Hardware Error\]: event severity: fatal$"),
    // readonly-monitor.json. ext4_handle_error (fs/ext4/super.c) still prints this on errors=remount-ro in 6.x.
    npd_permanent("ReadonlyFilesystem", "FilesystemIsReadOnly", r"Remounting filesystem read-only"),
    // Ours: kernel/watchdog.c, "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]" (a task name may hold anything).
    ours("SoftLockup", r"BUG: soft lockup - CPU#\d+ stuck for \d+s! \[.+:\d+\]"),
    // Ours: kernel/watchdog.c, "CPU%u: Watchdog detected hard LOCKUP on cpu %u" (older: no "CPU%u: ").
    ours("HardLockup", r"Watchdog detected hard LOCKUP on cpu \d+"),
    // Ours: kernel/rcu/tree_stall.h ("INFO: %s self-detected stall on CPU", "INFO: %s detected stalls on CPUs/tasks:"),
    // tree_exp.h ("INFO: %s detected expedited stalls on CPUs/tasks: {", or "..., but suppressed full report ..."),
    // tasks.h ("INFO: rcu_tasks detected stalls on tasks:"), for every flavour (rcu_sched, rcu_preempt, rcu_bh...).
    ours("RCUStall", r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?\b.*"),
    // Ours: the x86 page-fault oops (arch/x86/mm/fault.c) as printed since 5.2, and before 5.2 for a non-NULL address
    // (NPD's rule above has the NULL one).
    ours(
        "KernelOops",
        concat!(
            r"BUG: (?:unable to handle page fault for address:|kernel NULL pointer dereference, address:",
            r"|unable to handle kernel paging request at) .*",
        ),
    ),
    // Ours: the die header, "%s: %04lx [#%d]..." on x86 (str "Oops", "general protection fault...", ...; since 2024
    // behind an "Oops: " prefix) and "Internal error: %s: %016lx [#%d]..." on arm64 (str "Oops", "Oops - BUG", ...).
    ours("KernelOops", r"(?:Oops|general protection fault).*: [0-9a-f]+ \[#\d+\].*"),
    // Ours: lib/bug.c report_bug, "kernel BUG at %s:%u!" or "Kernel BUG at %pB [verbose debug info unavailable]".
    ours("KernelOops", r"[Kk]ernel BUG at .*"),
];

/// A pattern as NPD compiles it: `\z` appended. The group keeps `\z` on every branch of a top-level `|`; NPD appends
/// it bare, which is the same for its patterns (none has a top-level `|`).
fn anchored(pattern: &str) -> String {
    format!(r"(?-u)(?:{pattern})\z")
}

/// The compiled rules.
#[derive(Debug)]
pub struct Patterns {
    /// Compiled at the first line: a node whose kernel stays quiet never pays for it.
    set: OnceLock<Option<RegexSet>>,
    rules: &'static [Rule],
}

impl Patterns {
    /// NPD's kernel-monitor rules and ours, compiled when the first line comes.
    #[must_use]
    pub const fn new() -> Self {
        Self { set: OnceLock::new(), rules: RULES }
    }

    /// The compiled set; none if it does not compile, which the unit tests rule out (they
    /// compile every pattern), and which is logged once rather than stopping the daemon.
    fn set(&self) -> Option<&RegexSet> {
        self.set
            .get_or_init(|| {
                RegexSet::new(self.rules.iter().map(|rule| anchored(rule.pattern)))
                    .inspect_err(|err| {
                        tracing::error!("the kernel log rules do not compile, lines go unmatched: {err}")
                    })
                    .ok()
            })
            .as_ref()
    }

    /// The first rule (in table order) that matches the line, trailing newline ignored; None for an ordinary line.
    #[must_use]
    pub fn classify(&self, line: &str) -> Option<&'static Rule> {
        // NPD matches strings.TrimSpace of the message, and skips an empty one.
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        // The set reports matching rules in table order.
        let first = self.set()?.matches(line.as_bytes()).into_iter().next()?;
        self.rules.get(first)
    }

    /// Every rule, for docs and tests.
    #[must_use]
    pub fn rules(&self) -> &'static [Rule] {
        self.rules
    }
}

impl Default for Patterns {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::bytes::Regex;

    /// One line per rule of RULES, in the same order, with the reason it must give.
    const EXAMPLES: &[(&str, &str)] = &[
        // NPD test/kernel_log_generator/problems/docker_hung, and aufs_umount_hung (AUFSUmountHung is gone: TaskHung).
        ("DockerHung", "INFO: task docker:20744 blocked for more than 120 seconds."),
        ("TaskHung", "INFO: task umount.aufs:21568 blocked for more than 120 seconds."),
        // NPD test/kernel_log_generator/problems/unregister_netdevice, null_pointer, divide_zero (its trailing blank).
        ("UnregisterNetDevice", "unregister_netdevice: waiting for lo to become free. Usage count = 1"),
        ("KernelOops", "BUG: unable to handle kernel NULL pointer dereference at 0000000000000078"),
        ("KernelOops", "divide error: 0000 [#1] SMP "),
        // NPD pkg/systemlogmonitor/log_buffer_equivalence_test.go.
        ("Ext4Error", "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2"),
        // fs/ext4/super.c __ext4_warning, "EXT4-fs warning (device %s): %s:%d: %pV".
        ("Ext4Warning", "EXT4-fs warning (device sda1): ext4_dx_add_entry:2461: Directory (ino: 2) index full"),
        // fs/buffer.c buffer_io_error, "Buffer I/O error on dev %pg, logical block %llu%s".
        ("IOError", "Buffer I/O error on dev sda1, logical block 0, async page read"),
        // NPD commit 2e15606d ("Monitor XFS shutdown") message.
        ("XfsHasShutdown", "XFS (dm-4): I/O Error Detected. Shutting down filesystem"),
        // The kernel's Documentation/firmware-guide/acpi/apei/einj.rst.
        ("MemoryReadError", "EDAC MC3: 1 CE memory read error on CPU_SrcID#0_Channel#0_DIMM#0 (channel:0 slot:0)"),
        // NPD commit 55626320 ("Add UEFI Common Platform Error Record (CPER) support") message.
        ("CperHardwareErrorCorrected", "{37}[Hardware Error]: event severity: corrected"),
        ("CperHardwareErrorRecoverable", "{3}[Hardware Error]: event severity: recoverable"),
        ("CperHardwareErrorFatal", "[Hardware Error]: event severity: fatal"),
        // NPD test/kernel_log_generator/problems/readonly_filesystem.
        ("FilesystemIsReadOnly", "EXT4-fs (sda1): Remounting filesystem read-only"),
        // Ours, from the printk format strings cited in RULES, with their pr_fmt prefixes.
        ("SoftLockup", "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [kworker/1:1H:123]"),
        ("HardLockup", "watchdog: CPU3: Watchdog detected hard LOCKUP on cpu 3"),
        ("RCUStall", "rcu: INFO: rcu_sched self-detected stall on CPU"),
        ("KernelOops", "BUG: unable to handle page fault for address: ffffc90000a3c000"),
        ("KernelOops", "Oops: 0000 [#1] SMP "),
        ("KernelOops", "kernel BUG at mm/slub.c:123!"),
    ];

    #[test]
    fn every_pattern_compiles() {
        for rule in Patterns::new().rules() {
            assert_eq!(Regex::new(rule.pattern).err(), None, "{}", rule.pattern);
            assert_eq!(Regex::new(&anchored(rule.pattern)).err(), None, "{}", rule.pattern);
        }
    }

    #[test]
    fn each_example_gives_its_own_rule() {
        let patterns = Patterns::new();
        assert_eq!(EXAMPLES.len(), patterns.rules().len());
        for (rule, (reason, line)) in patterns.rules().iter().zip(EXAMPLES) {
            let got = patterns.classify(line).map(|r| (r.reason, r.pattern));
            assert_eq!(got, Some((*reason, rule.pattern)), "{line}");
        }
    }

    #[test]
    fn other_forms_of_our_problems() {
        let patterns = Patterns::new();
        for (reason, line) in [
            ("HardLockup", "NMI watchdog: Watchdog detected hard LOCKUP on cpu 1"),
            ("RCUStall", "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"),
            (
                "RCUStall",
                "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 12-... } 22 jiffies s: 277",
            ),
            ("RCUStall", "INFO: rcu_tasks detected stalls on tasks:"),
            ("RCUStall", "INFO: rcu_sched self-detected stall on CPU { 2}  (t=60000 jiffies g=1 c=0 q=5)"),
            ("KernelOops", "BUG: kernel NULL pointer dereference, address: 0000000000000008"),
            ("KernelOops", "BUG: unable to handle kernel paging request at ffffffffc0123000"),
            ("KernelOops", "general protection fault: 0000 [#1] SMP"),
            (
                "KernelOops",
                concat!(
                    "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: ",
                    "0000 [#1] PREEMPT SMP KASAN NOPTI",
                ),
            ),
            ("KernelOops", "Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI"),
            ("KernelOops", "Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP"),
            ("KernelOops", "Internal error: Oops - BUG: 00000000f2000800 [#1] SMP"),
        ] {
            assert_eq!(patterns.classify(line).map(|r| r.reason), Some(reason), "{line}");
        }
    }

    #[test]
    fn the_three_lines() {
        let patterns = Patterns::new();
        let reason = |line| patterns.classify(line).map(|r| r.reason);
        assert_eq!(reason("BUG: soft lockup - CPU#1 stuck for 23s! [test:123]"), Some("SoftLockup"));
        assert_eq!(reason("EXT4-fs (loop0): Remounting filesystem read-only"), Some("FilesystemIsReadOnly"));
        assert_eq!(
            reason("BUG: unable to handle kernel NULL pointer dereference at 0000000000000008"),
            Some("KernelOops")
        );
    }

    #[test]
    fn ordinary_lines_are_none() {
        let patterns = Patterns::new();
        for line in [
            "e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX/TX",
            r#"audit: type=1400 audit(1700000000.123:45): apparmor="DENIED" operation="open" profile="snap" pid=1"#,
            "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none.",
            "",
            "\n",
        ] {
            assert_eq!(patterns.classify(line).map(|r| r.reason), None, "{line}");
        }
    }

    #[test]
    fn trailing_newline_is_ignored() {
        let patterns = Patterns::new();
        let reason = |line| patterns.classify(line).map(|r| r.reason);
        assert_eq!(reason("BUG: soft lockup - CPU#1 stuck for 23s! [test:123]\n"), Some("SoftLockup"));
        assert_eq!(reason("EXT4-fs (loop0): Remounting filesystem read-only\n"), Some("FilesystemIsReadOnly"));
    }

    #[test]
    fn anchored_at_the_end_not_the_start() {
        let patterns = Patterns::new();
        let reason = |line| patterns.classify(line).map(|r| r.reason);
        // NPD's README injects this line, prefix and all, to show DockerHung.
        assert_eq!(reason("kernel: INFO: task docker:20744 blocked for more than 120 seconds."), Some("DockerHung"));
        assert_eq!(reason("EXT4-fs (sda1): Remounting filesystem read-only, said nobody"), None);
        assert_eq!(reason("divide error: 0000 [#1] PREEMPT SMP"), None);
    }

    #[test]
    fn conditions_match_the_rules() {
        let rules = Patterns::default().rules();
        for rule in rules {
            // A permanent rule sets a declared condition; a temporary one sets none.
            let declared = CONDITIONS.iter().any(|c| Some(c.condition) == rule.condition);
            assert_eq!(declared, rule.severity == Severity::Permanent, "{}", rule.reason);
            assert_eq!(rule.condition.is_some(), declared, "{}", rule.reason);
        }
        // Every declared condition has a rule that sets it.
        let mut used: Vec<&str> = rules.iter().filter_map(|r| r.condition).collect();
        used.sort_unstable();
        used.dedup();
        let mut declared: Vec<&str> = CONDITIONS.iter().map(|c| c.condition).collect();
        declared.sort_unstable();
        assert_eq!(used, declared);
        // Ours are events only: the conditions are NPD's.
        assert_eq!(rules.iter().filter(|r| !r.from_npd && r.severity == Severity::Permanent).count(), 0);
    }
}
