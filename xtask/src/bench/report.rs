//! The results table, and the arithmetic behind its figures.

use std::fmt::Write as _;

/// One line of the results table.
#[derive(Clone, Debug)]
pub(super) struct Row {
    /// What was measured.
    pub measure: String,
    /// The figure.
    pub result: String,
    /// The figure it is compared with, measured in the same run.
    pub baseline: String,
    /// The goal from the issue, if it sets one.
    pub goal: String,
    /// A command that reproduces it (wrapped in a code span unless it has its own).
    pub command: String,
}

impl Row {
    pub(super) fn new(measure: impl Into<String>, result: impl Into<String>, baseline: impl Into<String>) -> Self {
        Self {
            measure: measure.into(),
            result: result.into(),
            baseline: baseline.into(),
            goal: String::new(),
            command: String::new(),
        }
    }

    pub(super) fn goal(mut self, goal: impl Into<String>) -> Self {
        self.goal = goal.into();
        self
    }

    pub(super) fn command(mut self, command: impl Into<String>) -> Self {
        self.command = command.into();
        self
    }
}

/// The rows as one markdown table.
pub(super) fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| measurement | result | baseline (same run) | goal | reproduce |\n|---|---|---|---|---|\n");
    for row in rows {
        // A command with its own code spans is markdown already.
        let command = if row.command.is_empty() || row.command.contains('`') {
            row.command.clone()
        } else {
            format!("`{}`", row.command)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&row.measure),
            cell(&row.result),
            cell(&row.baseline),
            cell(&row.goal),
            command.replace('|', "\\|")
        );
    }
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of `values`, sorted in place; None for none.
pub(super) fn percentile(values: &mut [i64], p: f64) -> Option<i64> {
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values.get(rank.clamp(1, values.len().max(1)) - 1).copied()
}

/// `1234567.8` as `1,234,568`.
pub(super) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds as `850 ns`, `12.3 µs` or `4.56 ms`.
pub(super) fn duration_ns(ns: f64) -> String {
    if ns.abs() < 1e3 {
        format!("{ns:.0} ns")
    } else if ns.abs() < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// Bytes as `12.3 MiB`.
pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let mut values: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 50.0), Some(50));
        assert_eq!(percentile(&mut values, 99.0), Some(99));
        assert_eq!(percentile(&mut [], 99.0), None);
        assert_eq!(percentile(&mut [7], 1.0), Some(7));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_ns(850.0), "850 ns");
        assert_eq!(duration_ns(12_345.0), "12.3 µs");
        assert_eq!(duration_ns(4_560_000.0), "4.56 ms");
        assert_eq!(mib(3 << 20), "3.0 MiB");
    }

    #[test]
    fn escapes_table_cells() {
        let rows = [Row::new("a|b", "1", "2").goal("≥ 3").command("x | y")];
        assert_eq!(
            table(&rows),
            "| measurement | result | baseline (same run) | goal | reproduce |\n|---|---|---|---|---|\n\
             | a\\|b | 1 | 2 | ≥ 3 | `x \\| y` |\n"
        );
    }
}
