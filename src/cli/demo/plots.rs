//! The demo's plots, per PEFT kind under `<out>/plots/`:
//!
//! * `<kind>-per-class-accuracy.png` — each class's GM accuracy against its training
//!   count: zero-shot, PromptFL (plain federated fine-tuning) and FedPuReL;
//! * `<kind>-rounds.png` — GM/PM accuracy and balancedness per round of the compared
//!   algorithms;
//! * `<kind>-tkl-vs-balancedness.png` — GM TKL and plain KL against GM balancedness, one
//!   point per round and seed of every row, with Pearson r;
//! * `<kind>-gradient-angles.png` — per round, the stage-1 angle between task and
//!   alignment gradients, the obtuse fraction and the norm purification removed, for
//!   FedPuReL (applied) and PromptFL (probed);
//!
//! and once: `partition.png` (the clients × classes heatmap) and `world-samples.png`
//! (example images of the two domains). Per-round plots show the first seed (the
//! scatter shows every seed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::kind_name;
use crate::data::dataset::SplitKind;
use crate::data::world::{self, Domain};
use crate::fed::record::RoundRecord;
use crate::metrics::worst_decile;
use crate::report::evidence::{divergence_points, KindEvidence};
use crate::report::plots::{self, ClassSeries, Line, LinePanel, PointGroup, RoundSeries, ScatterPanel};
use crate::report::{atomic, heatmap};
use crate::setup::RunConfig;

/// The compared algorithms (not ablations) that the per-round plot shows.
const ROUNDS_ROWS: [&str; 5] = [
    "zeroshot",
    "promptfl",
    "promptfl+fedgrab",
    "promptfolio",
    "fedpurel",
];

/// A row's legend label.
fn legend(label: &str) -> String {
    match label {
        "zeroshot" => "zero-shot CLIP".to_string(),
        "promptfl" => "PromptFL (fine-tuned)".to_string(),
        "promptfl+fedgrab" => "PromptFL + Fed-GraB".to_string(),
        "promptfolio" => "PromptFolio".to_string(),
        "fedpurel" => "FedPuReL".to_string(),
        other => other.to_string(),
    }
}

/// Mean per-class accuracy over the last ≤ 10 rounds (None where no round has a value).
fn last_rounds_per_class(records: &[RoundRecord]) -> Vec<Option<f64>> {
    let tail = &records[records.len().saturating_sub(10)..];
    let classes = tail.first().map_or(0, |r| r.gm.per_class.len());
    (0..classes)
        .map(|c| {
            let v: Vec<f64> = tail.iter().filter_map(|r| r.gm.per_class[c]).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// Writes one kind's plots (and, for the first kind, the partition and the world
/// samples) under `out/plots/`; `records[row][seed]`.
pub fn write(
    base: &RunConfig,
    out: &Path,
    labels: &[String],
    records: &[Vec<Vec<RoundRecord>>],
    evidence: &KindEvidence,
) -> Result<Vec<PathBuf>> {
    let dir = out.join("plots");
    let kind = kind_name(base.peft);
    for (l, r) in labels.iter().zip(records) {
        if r.first().is_none_or(|r| r.is_empty()) {
            bail!("{kind} {l}: no completed round to plot");
        }
    }
    let first: Vec<&[RoundRecord]> = records.iter().map(|r| r[0].as_slice()).collect();
    let row = |name: &str| labels.iter().position(|l| l == name);
    let mut data = base.data.clone();
    data.seed = base.train.seed;
    let (ds, partition) = data.load()?;
    let mut written = Vec::new();
    let mut put = |name: String, png: Vec<u8>| -> Result<()> {
        let path = dir.join(name);
        atomic::write(&path, &png)?;
        written.push(path);
        Ok(())
    };
    let class_series: Vec<ClassSeries> = ["zeroshot", "promptfl", "fedpurel"]
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            row(a).map(|r| ClassSeries {
                label: format!("{} GM", legend(a)),
                colour: plots::colour_of(a, i),
                accuracy: last_rounds_per_class(first[r]),
            })
        })
        .collect();
    put(
        format!("{kind}-per-class-accuracy.png"),
        plots::per_class_png(
            &partition.class_counts,
            &class_series,
            &format!(
                "{kind}: per-class GM test accuracy vs training images (seed {}, mean of the last 10 rounds)",
                data.seed
            ),
        )?,
    )?;
    let round_series: Vec<RoundSeries> = ROUNDS_ROWS
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let r = first[row(a)?];
            Some(RoundSeries {
                label: legend(a),
                colour: plots::colour_of(a, i),
                gm_all: r.iter().map(|x| x.gm.accuracy.all).collect(),
                pm_all: r.iter().map(|x| x.pm.accuracy.all).collect(),
                gm_balancedness: r
                    .iter()
                    .map(|x| worst_decile(&x.gm.per_class).unwrap_or(f64::NAN))
                    .collect(),
                pm_balancedness: r
                    .iter()
                    .map(|x| worst_decile(&x.pm.per_class).unwrap_or(f64::NAN))
                    .collect(),
                level: *a == "zeroshot",
            })
        })
        .collect();
    put(
        format!("{kind}-rounds.png"),
        plots::rounds_png(
            &round_series,
            &format!("{kind}: accuracy and balancedness per round (seed {})", data.seed),
        )?,
    )?;
    // TKL and KL against balancedness, every row, round and seed.
    let mut tkl_groups = Vec::new();
    let mut kl_groups = Vec::new();
    for (i, (l, r)) in labels.iter().zip(records).enumerate() {
        let (t, k) = divergence_points(r);
        let colour = plots::colour_of(l, i);
        tkl_groups.push(PointGroup {
            label: legend(l),
            colour,
            points: t,
        });
        kl_groups.push(PointGroup {
            label: legend(l),
            colour,
            points: k,
        });
    }
    let r = |x: Option<f64>| x.map_or("–".to_string(), |r| format!("{r:+.3}"));
    put(
        format!("{kind}-tkl-vs-balancedness.png"),
        plots::scatter_png(
            &[
                ScatterPanel {
                    title: format!(
                        "TKL: pooled Pearson r = {}",
                        r(evidence.pooled_pearson_r_tkl_balancedness)
                    ),
                    x_desc: "GM TKL to zero-shot".into(),
                    y_desc: "GM balancedness, worst-decile mean (%)".into(),
                    groups: tkl_groups,
                },
                ScatterPanel {
                    title: format!(
                        "plain KL: pooled Pearson r = {}",
                        r(evidence.pooled_pearson_r_kl_balancedness)
                    ),
                    x_desc: "GM plain KL to zero-shot (temperature 1)".into(),
                    y_desc: "GM balancedness, worst-decile mean (%)".into(),
                    groups: kl_groups,
                },
            ],
            &format!("{kind}: divergence from zero-shot vs balancedness (every round and seed of every row)"),
        )?,
    )?;
    // Gradient angles per round: FedPuReL (applied) and PromptFL (probed).
    type Pick = fn(&RoundRecord) -> Option<f64>;
    let stats: [(&str, (f64, f64), Pick); 3] = [
        (
            "mean angle, task vs alignment gradient (degrees)",
            (0.0, 180.0),
            |r| r.stage1.angle_mean_deg,
        ),
        ("obtuse angles (% of tensors × steps)", (0.0, 100.0), |r| {
            r.stage1.obtuse_fraction.map(|f| 100.0 * f)
        }),
        (
            "task-gradient norm removed by purification (%)",
            (0.0, 100.0),
            |r| r.stage1.removed_norm_fraction.map(|f| 100.0 * f),
        ),
    ];
    let angle_rows: Vec<(usize, &str)> = ["promptfl", "fedpurel"]
        .iter()
        .filter_map(|a| row(a).map(|i| (i, *a)))
        .collect();
    let panels: Vec<LinePanel> = stats
        .iter()
        .map(|(title, bounds, pick)| LinePanel {
            title: title.to_string(),
            bounds: *bounds,
            lines: angle_rows
                .iter()
                .map(|&(i, a)| Line {
                    label: if a == "promptfl" {
                        "PromptFL (probed, not applied)".into()
                    } else {
                        legend(a)
                    },
                    colour: plots::colour_of(a, i),
                    ys: first[i].iter().map(|r| pick(r).unwrap_or(f64::NAN)).collect(),
                    level: false,
                })
                .collect(),
        })
        .collect();
    put(
        format!("{kind}-gradient-angles.png"),
        plots::line_panels_png(
            &panels,
            (1, 3),
            &format!("{kind}: stage-1 gradients per round (seed {})", data.seed),
        )?,
    )?;
    if !dir.join("partition.png").is_file() || !dir.join("world-samples.png").is_file() {
        let g = &partition.groups;
        put(
            "partition.png".into(),
            heatmap::render_png(
                &partition.train_class_matrix(&ds.train.labels, ds.num_classes()),
                &partition.class_counts,
                [g.many.len(), g.medium.len(), g.few.len()],
                &format!(
                    "Training images per client and class: {} clients, {} classes (seed {})",
                    partition.clients.len(),
                    ds.num_classes(),
                    data.seed
                ),
            )?,
        )?;
        let samples = |domain: Domain| -> Vec<(image::RgbImage, String)> {
            (0..10)
                .map(|i| {
                    let s = world::sample(data.world_seed, domain, SplitKind::Train, i);
                    let name = world::Class::of(s.class).prompt_name();
                    let caption = match name.rsplit_once(' ') {
                        Some((attrs, shape)) => format!("{attrs}\n{shape}"),
                        None => name,
                    };
                    (s.image, caption)
                })
                .collect()
        };
        put(
            "world-samples.png".into(),
            plots::image_grid_png(
                &[
                    (
                        "pretraining domain (the demo CLIP was trained on it; the demo's task is in it)"
                            .to_string(),
                        samples(Domain::Pretrain),
                    ),
                    (
                        "downstream domain (shifted: the earlier demo's task, zero-shot 41 %)".to_string(),
                        samples(Domain::Downstream),
                    ),
                ],
                4,
            )?,
        )?;
    }
    Ok(written)
}
