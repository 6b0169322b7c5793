//! One table of figures, each beside its same-run baseline and its goal,
//! printed and written as JSON.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a figure must be to meet its goal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Goal {
    /// The value must be below this (in the figure's unit).
    ValueBelow { limit: f64 },
    /// The value must be at least this.
    ValueAtLeast { limit: f64 },
    /// value / baseline must be below this.
    RatioBelow { limit: f64 },
    /// value / baseline must be at least this.
    RatioAtLeast { limit: f64 },
    /// No goal: context for the others.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub figure: String,
    pub unit: String,
    pub value: f64,
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_is: String,
    pub ratio: Option<f64>,
    pub goal: Goal,
    /// None when there is no goal.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(figure: &str, unit: &str, value: f64, baseline: Option<(f64, &str)>, goal: Goal) -> Self {
        let ratio = baseline.and_then(|(b, _)| (b > 0.0).then(|| value / b));
        let met = match goal {
            Goal::ValueBelow { limit } => Some(value < limit),
            Goal::ValueAtLeast { limit } => Some(value >= limit),
            Goal::RatioBelow { limit } => ratio.map(|r| r < limit),
            Goal::RatioAtLeast { limit } => ratio.map(|r| r >= limit),
            Goal::None => None,
        };
        Self {
            figure: figure.into(),
            unit: unit.into(),
            value,
            baseline: baseline.map(|(b, _)| b),
            baseline_is: baseline.map(|(_, what)| what.to_string()).unwrap_or_default(),
            ratio,
            goal,
            met,
        }
    }
}

fn number(v: f64, unit: &str) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

fn goal_text(goal: &Goal, unit: &str) -> String {
    match goal {
        Goal::ValueBelow { limit } => format!("< {}", number(*limit, unit)),
        Goal::ValueAtLeast { limit } => format!(">= {}", number(*limit, unit)),
        Goal::RatioBelow { limit } => format!("ratio < {limit:.2}"),
        Goal::RatioAtLeast { limit } => format!("ratio >= {limit:.2}"),
        Goal::None => "-".into(),
    }
}

/// The rows as a text table (figure, value, baseline, ratio, goal, met).
pub fn table(rows: &[Row]) -> String {
    let header = ["figure", "value", "baseline", "ratio", "goal", "met"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                number(r.value, &r.unit),
                r.baseline.map(|b| format!("{} ({})", number(b, &r.unit), r.baseline_is)).unwrap_or_else(|| "-".into()),
                r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
                goal_text(&r.goal, &r.unit),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        let padded: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "| {} |", padded.join(" | "));
    };
    line(&mut out, &header.map(String::from));
    let _ = writeln!(out, "|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// Writes `report` as pretty JSON to `path`, creating its directory.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_judge_their_goals_and_the_table_lines_up() {
        let fast = Row::new("p99", "ms", 1.5, Some((0.5, "healthz")), Goal::ValueBelow { limit: 2.0 });
        assert_eq!((fast.ratio, fast.met), (Some(3.0), Some(true)));
        let slow = Row::new("create p50", "ms", 12.0, Some((10.0, "no webhook")), Goal::RatioBelow { limit: 1.1 });
        assert_eq!(slow.met, Some(false));
        let rate = Row::new("rate", "/s", 990.0, None, Goal::ValueAtLeast { limit: 1000.0 });
        assert_eq!((rate.ratio, rate.met), (None, Some(false)));
        let text = table(&[fast, slow, rate]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[2].contains("1.50 ms") && lines[2].contains("3.00x") && lines[2].contains("yes"), "{text}");
        assert!(lines[3].contains("ratio < 1.10") && lines[3].contains("NO"), "{text}");
    }
}
