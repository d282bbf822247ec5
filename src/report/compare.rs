//! The comparison table of `fedpurel compare`: one row per algorithm, GM and PM ×
//! All/Many/Medium/Few/Balancedness, each as mean ± sample standard deviation over seeds
//! of the runs' last-10-round means, the best mean per column in bold — the layout of
//! the paper's main table. Written as Markdown and CSV.

use std::fmt::Write;

use anyhow::{bail, Result};

use super::run_dir::{ModelSummary, Summary};

/// Columns: (label, which model, which field).
const COLUMNS: &[(&str, bool, Field)] = &[
    ("GM All", true, Field::All),
    ("GM Many", true, Field::Many),
    ("GM Med", true, Field::Medium),
    ("GM Few", true, Field::Few),
    ("GM Bal", true, Field::Balancedness),
    ("PM All", false, Field::All),
    ("PM Many", false, Field::Many),
    ("PM Med", false, Field::Medium),
    ("PM Few", false, Field::Few),
    ("PM Bal", false, Field::Balancedness),
];

/// Columns only the CSV has (after [`COLUMNS`]): the worst-class accuracy, kept beside
/// the primary balancedness (docs/method.md §7).
const CSV_ONLY: &[(&str, bool, Field)] = &[
    ("GM Worst", true, Field::WorstClass),
    ("PM Worst", false, Field::WorstClass),
];

#[derive(Debug, Clone, Copy)]
enum Field {
    All,
    Many,
    Medium,
    Few,
    Balancedness,
    WorstClass,
}

impl Field {
    fn of(self, m: &ModelSummary) -> Option<f64> {
        match self {
            Field::All => Some(m.all),
            Field::Many => m.many,
            Field::Medium => m.medium,
            Field::Few => m.few,
            Field::Balancedness => m.worst_decile,
            Field::WorstClass => Some(m.worst_class),
        }
    }
}

/// Mean and sample standard deviation (n − 1; None for one value).
pub fn mean_std(xs: &[f64]) -> Option<(f64, Option<f64>)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = (xs.len() > 1).then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// One row: an algorithm and its runs (one per seed).
pub struct Row<'a> {
    /// Algorithm name as given on the command line.
    pub algorithm: String,
    /// Summaries of its runs.
    pub runs: Vec<&'a Summary>,
}

/// Refuses a grid whose cells disagree on data or split: for every seed, every
/// algorithm's run must carry the same split fingerprint.
pub fn check_same_splits(rows: &[Row]) -> Result<()> {
    let mut by_seed: std::collections::BTreeMap<u64, (&str, &str)> = Default::default();
    for r in rows {
        for s in &r.runs {
            let e = by_seed.entry(s.run.seed).or_insert((&s.run.split, &r.algorithm));
            if e.0 != s.run.split {
                bail!(
                    "the grid's cells disagree on data or split: with seed {} `{}` saw split {} but `{}` saw split {}; the table would compare different data (delete the stale run directories or use another --out)",
                    s.run.seed,
                    e.1,
                    e.0,
                    r.algorithm,
                    s.run.split
                );
            }
        }
    }
    Ok(())
}

/// Mean and optional std of one table cell (None: no run has the number).
type Cell = Option<(f64, Option<f64>)>;

fn cells(rows: &[Row], columns: &[(&str, bool, Field)]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|r| {
            columns
                .iter()
                .map(|&(_, gm, f)| {
                    let xs: Vec<f64> = r
                        .runs
                        .iter()
                        .filter_map(|s| f.of(if gm { &s.gm } else { &s.pm }))
                        .collect();
                    mean_std(&xs)
                })
                .collect()
        })
        .collect()
}

/// The Markdown table; the best mean per column is bold.
pub fn markdown(rows: &[Row], title: &str) -> String {
    let cells = cells(rows, COLUMNS);
    let best: Vec<Option<f64>> = (0..COLUMNS.len())
        .map(|c| {
            cells
                .iter()
                .filter_map(|r| r[c].map(|(m, _)| m))
                .fold(None, |b: Option<f64>, m| Some(b.map_or(m, |b| b.max(m))))
        })
        .collect();
    let mut out = format!("# {title}\n\n| algorithm | seeds |");
    for (label, _, _) in COLUMNS {
        let _ = write!(out, " {label} |");
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" --- |".repeat(COLUMNS.len()));
    out.push('\n');
    for (r, row) in rows.iter().zip(&cells) {
        let seeds: Vec<String> = r.runs.iter().map(|s| s.run.seed.to_string()).collect();
        let _ = write!(out, "| {} | {} |", r.algorithm, seeds.join(","));
        for (c, cell) in row.iter().enumerate() {
            let text = match cell {
                None => "–".to_string(),
                Some((m, s)) => {
                    let v = match s {
                        Some(s) => format!("{m:.2} ± {s:.2}"),
                        None => format!("{m:.2}"),
                    };
                    if best[c].is_some_and(|b| (b - m).abs() < 1e-9) {
                        format!("**{v}**")
                    } else {
                        v
                    }
                }
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out.push_str(
        "\nEach cell: mean ± sample standard deviation (n − 1) over seeds of the run's last-10-round mean; bold: best mean in the column. All/Many/Med/Few: accuracy (%); Bal: balancedness, the mean accuracy of the worst 10 % of classes (%; PM: per-class accuracy pooled over clients; the worst single class is in compare.csv). GM: global model on the global test set; PM: personalized models on their clients' test sets (unweighted client mean). How each algorithm forms its PM is stated in its run's summary.md.\n",
    );
    out
}

/// The CSV table: one line per algorithm, mean and std columns per metric.
pub fn csv(rows: &[Row]) -> String {
    let columns: Vec<(&str, bool, Field)> = COLUMNS.iter().chain(CSV_ONLY).copied().collect();
    let cells = cells(rows, &columns);
    let mut out = String::from("algorithm,seeds");
    for (label, _, _) in &columns {
        let key = label.to_lowercase().replace(' ', "_");
        let _ = write!(out, ",{key}_mean,{key}_std");
    }
    out.push('\n');
    for (r, row) in rows.iter().zip(&cells) {
        let seeds: Vec<String> = r.runs.iter().map(|s| s.run.seed.to_string()).collect();
        let _ = write!(out, "{},{}", r.algorithm, seeds.join(" "));
        for cell in row {
            match cell {
                Some((m, s)) => {
                    let _ = write!(out, ",{m:.4},{}", s.map_or(String::new(), |s| format!("{s:.4}")));
                }
                None => out.push_str(",,"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::run_dir::RunIdentity;

    fn summary(algorithm: &str, seed: u64, split: &str, gm_all: f64, pm_few: Option<f64>) -> Summary {
        let m = |all: f64, few: Option<f64>| ModelSummary {
            all,
            many: Some(all + 1.0),
            medium: None,
            few,
            worst_decile: Some(0.5),
            worst_class: 0.5,
            tkl: 0.1,
            best_all: all,
        };
        Summary {
            run: RunIdentity {
                algorithm: algorithm.into(),
                peft: "prompt".into(),
                seed,
                split: split.into(),
                pm_protocol: String::new(),
            },
            rounds_completed: 3,
            gm: m(gm_all, Some(1.0)),
            pm: m(50.0, pm_few),
            zeroshot: m(10.0, None),
            definitions: String::new(),
        }
    }

    #[test]
    fn mean_and_sample_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m, 2.5);
        assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), Some((7.0, None)));
        assert_eq!(mean_std(&[]), None);
    }

    #[test]
    fn table_marks_the_best_mean_and_shows_spread() {
        let (a1, a2) = (
            summary("a", 1, "x", 10.0, Some(3.0)),
            summary("a", 2, "y", 20.0, None),
        );
        let (b1, b2) = (
            summary("b", 1, "x", 30.0, Some(1.0)),
            summary("b", 2, "y", 34.0, Some(2.0)),
        );
        let rows = vec![
            Row {
                algorithm: "a".into(),
                runs: vec![&a1, &a2],
            },
            Row {
                algorithm: "b".into(),
                runs: vec![&b1, &b2],
            },
        ];
        check_same_splits(&rows).unwrap();
        let md = markdown(&rows, "t");
        // GM All: a = 15 ± 7.07, b = 32 ± 2.83 (best); PM Few: a only seed 1 → 3.00 (best).
        assert!(md.contains("| a | 1,2 | 15.00 ± 7.07 |"), "{md}");
        assert!(md.contains("**32.00 ± 2.83**"), "{md}");
        assert!(md.contains("**3.00**"), "{md}");
        let csv = csv(&rows);
        assert!(csv.starts_with("algorithm,seeds,gm_all_mean,gm_all_std"), "{csv}");
        assert!(csv.contains("\nb,1 2,32.0000,2.8284,"), "{csv}");
    }

    #[test]
    fn cells_with_different_splits_for_one_seed_are_refused() {
        let a = summary("a", 1, "x", 10.0, None);
        let b = summary("b", 1, "z", 10.0, None);
        let rows = vec![
            Row {
                algorithm: "a".into(),
                runs: vec![&a],
            },
            Row {
                algorithm: "b".into(),
                runs: vec![&b],
            },
        ];
        let e = check_same_splits(&rows).unwrap_err().to_string();
        assert!(
            e.contains("seed 1") && e.contains("`a`") && e.contains("`b`"),
            "{e}"
        );
    }
}
