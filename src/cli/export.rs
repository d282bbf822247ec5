//! `fedpurel export world`: the demo's downstream task and its CLIP, written in files the
//! authors' code reads, so that anyone with their code can repeat the comparison of
//! `docs/fidelity.md` on the demo's setting.
//!
//! Layout under `--out` (the authors' ImageNet-LT reader, `datasets/imagenet_LT.py`, with
//! its root pointed here; also `fedpurel run --dataset imagenet-lt --root OUT`):
//!
//! ```text
//! ImageNet_LT/classnames.txt          "c07 striped yellow triangle" — folder, class name (label order)
//! ImageNet_LT/ImageNet_LT_train.txt   "train/c07/t000123.png 7" — the long-tailed training images
//! ImageNet_LT/ImageNet_LT_test.txt    "test/c07/e000045.png 7"  — the whole (balanced) test split
//! train/cNN/tIIIIII.png, test/cNN/eIIIIII.png   32 × 32 RGB; IIIIII = the image's index in the
//!                                      world's train / test split (so a split recorded with the
//!                                      authors' code maps back to world rows)
//! clip/model.safetensors              the model in OpenAI's state-dict key layout
//! clip/config.json, tokenizer files   architecture (head counts) and the model's own tokenizer
//! world.json                          what was exported: world seed, domain, sizes, long-tail
//!                                      cut, template, class names, image counts
//! ```
//!
//! The folder is written under a temporary name and renamed into place at the end.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rayon::prelude::*;
use serde::Serialize;

use crate::clip::config::SpecialTokens;
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::weights::{ClipWeights, SaveOptions};
use crate::clip::Checkpoint;
use crate::data::dataset::{Dataset, SplitKind};
use crate::data::world::Domain;
use crate::report::atomic;
use crate::setup::presets::{demo_preset, DEMO_MODEL};

/// Arguments of `fedpurel export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// What to export.
    #[command(subcommand)]
    pub what: ExportWhat,
}

/// What `fedpurel export` can write.
#[derive(Debug, Subcommand)]
pub enum ExportWhat {
    /// The demo's world task (long-tailed train list, test list, PNG images) and its CLIP
    /// in OpenAI's key layout, for the authors' code.
    World(WorldExportArgs),
}

/// Arguments of `fedpurel export world`.
#[derive(Debug, Args)]
pub struct WorldExportArgs {
    /// Output folder (refused if it exists, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// The quick demo's sizes (200 training images per class before the cut, 20 test)
    /// instead of the demo's (300, 50).
    #[arg(long)]
    pub quick: bool,
    /// CLIP checkpoint to export alongside (default: the demo CLIP).
    #[arg(long, default_value = DEMO_MODEL)]
    pub model: PathBuf,
    /// Run seed of the long-tail cut (the demo's: 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The world's seed (the demo's: 0).
    #[arg(long)]
    pub world_seed: Option<u64>,
    /// The world's domain (the demo's: downstream).
    #[arg(long, value_enum)]
    pub world_domain: Option<Domain>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
}

/// `world.json`: what an export holds.
#[derive(Debug, Serialize)]
pub struct WorldManifest {
    /// The world's seed.
    pub world_seed: u64,
    /// The domain the images come from.
    pub domain: Domain,
    /// Training images per class before the long-tail cut.
    pub train_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Imbalance factor of the cut.
    pub imb_factor: f64,
    /// Run seed of the cut.
    pub seed: u64,
    /// Images per class after the cut (label order).
    pub class_counts: Vec<usize>,
    /// World train indices kept by the cut, in list order.
    pub lt_train_rows: Vec<usize>,
    /// Test images.
    pub test_images: usize,
    /// The zero-shot template of the demo.
    pub template: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The exported model's source directory.
    pub model_source: PathBuf,
}

/// Runs `fedpurel export`.
pub fn run(args: ExportArgs) -> Result<()> {
    match args.what {
        ExportWhat::World(a) => {
            let m = export_world(&a)?;
            println!(
                "wrote {}: {} training images (long-tailed, IF {}), {} test images, {} classes, \
                 the model in OpenAI layout (clip/)",
                a.out.display(),
                m.lt_train_rows.len(),
                m.imb_factor,
                m.test_images,
                m.classes.len()
            );
            Ok(())
        }
    }
}

/// The folder name of class `c`: zero-padded so that sorting names sorts labels.
fn class_folder(c: usize) -> String {
    format!("c{c:02}")
}

/// Exports the world task of `args` to `args.out` and returns its manifest.
pub fn export_world(args: &WorldExportArgs) -> Result<WorldManifest> {
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    let mut cfg = demo_preset(args.quick, &args.model, Path::new(""), Path::new(""));
    if let Some(s) = args.seed {
        cfg.data.seed = s;
    }
    if let Some(s) = args.world_seed {
        cfg.data.world_seed = s;
    }
    if let Some(d) = args.world_domain {
        cfg.data.world_domain = d;
    }
    let model_dir = crate::setup::demo_model::resolve(&args.model)?;
    let ck = Checkpoint::open(&model_dir)?;
    let tokenizer = ClipTokenizer::from_dir(&model_dir)?;
    let (ds, partition) = cfg.data.load()?;
    let staged = staging_dir(&args.out)?;
    let list_dir = staged.join("ImageNet_LT");
    std::fs::create_dir_all(&list_dir).with_context(|| format!("cannot create {}", list_dir.display()))?;

    let train_lines = write_images(&ds, SplitKind::Train, &partition.lt_train, &staged, 't')?;
    let all_test: Vec<usize> = (0..ds.test.len()).collect();
    let test_lines = write_images(&ds, SplitKind::Test, &all_test, &staged, 'e')?;
    atomic::write(&list_dir.join("ImageNet_LT_train.txt"), train_lines.as_bytes())?;
    atomic::write(&list_dir.join("ImageNet_LT_test.txt"), test_lines.as_bytes())?;
    let names: String = ds
        .prompt_names()
        .iter()
        .enumerate()
        .map(|(c, n)| format!("{} {n}\n", class_folder(c)))
        .collect();
    atomic::write(&list_dir.join("classnames.txt"), names.as_bytes())?;

    let weights = ClipWeights::from_checkpoint(&ck)?;
    weights.save_openai(
        &staged.join("clip"),
        &SaveOptions {
            tokenizer: Some(model_dir.clone()),
            special_tokens: SpecialTokens {
                bos: Some(tokenizer.sot_id()),
                eos: Some(tokenizer.eot_id()),
                pad: None,
            },
        },
    )?;

    let manifest = WorldManifest {
        world_seed: cfg.data.world_seed,
        domain: cfg.data.world_domain,
        train_per_class: cfg.data.world_train_per_class,
        test_per_class: cfg.data.world_test_per_class,
        imb_factor: cfg.data.imb_factor.unwrap_or(100.0),
        seed: cfg.data.seed,
        class_counts: partition.class_counts.clone(),
        lt_train_rows: partition.lt_train.clone(),
        test_images: ds.test.len(),
        template: cfg.template.clone(),
        classes: ds.prompt_names(),
        model_source: args.model.clone(),
    };
    atomic::write(
        &staged.join("world.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("cannot remove the old {}", args.out.display()))?;
    }
    std::fs::rename(&staged, &args.out)
        .with_context(|| format!("cannot rename {} to {}", staged.display(), args.out.display()))?;
    Ok(manifest)
}

/// A fresh staging folder next to `out` (an old one from an interrupted export is
/// removed first).
fn staging_dir(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a folder path", out.display()))?;
    let staged = out.with_file_name(format!("{}.partial", name.to_string_lossy()));
    if staged.exists() {
        std::fs::remove_dir_all(&staged)
            .with_context(|| format!("cannot remove the stale {}", staged.display()))?;
    }
    std::fs::create_dir_all(&staged).with_context(|| format!("cannot create {}", staged.display()))?;
    Ok(staged)
}

/// Writes the images `rows` of `split` as PNGs under `root/<split>/cNN/` and returns their
/// list-file lines (`<split>/cNN/<prefix>IIIIII.png <label>`), in `rows` order.
fn write_images(ds: &Dataset, split: SplitKind, rows: &[usize], root: &Path, prefix: char) -> Result<String> {
    let top = match split {
        SplitKind::Train => "train",
        SplitKind::Test => "test",
    };
    let s = ds.split(split);
    for c in 0..ds.num_classes() {
        let dir = root.join(top).join(class_folder(c));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let lines = rows
        .par_iter()
        .map(|&i| -> Result<String> {
            let label = s.labels[i] as usize;
            let rel = format!("{top}/{}/{prefix}{i:06}.png", class_folder(label));
            let img = s.decode(i)?;
            let path = root.join(&rel);
            img.save(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(format!("{rel} {label}\n"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(lines.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::listfile::{self, ListDataset};

    /// An export of a small world reads back through the ImageNet-LT list reader to the
    /// very pixels and labels of the rows it names, and its model loads (OpenAI layout,
    /// heads from config.json) to the same image features as the source.
    #[test]
    fn export_reads_back_as_imagenet_lt_with_the_same_pixels_and_model() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("world");
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_MODEL);
        let args = WorldExportArgs {
            out: out.clone(),
            quick: true,
            model: model.clone(),
            seed: None,
            world_seed: None,
            world_domain: None,
            force: false,
        };
        let m = export_world(&args).unwrap();
        assert_eq!(m.classes.len(), 60);
        assert_eq!(m.class_counts.iter().sum::<usize>(), m.lt_train_rows.len());
        assert!(!out.with_file_name("world.partial").exists());
        // A second export is refused without --force, names the folder, and keeps it.
        let e = format!("{:#}", export_world(&args).unwrap_err());
        assert!(e.contains("--force") && e.contains("world"), "{e}");

        let back = listfile::load(ListDataset::ImageNetLt, &out, true).unwrap();
        let (world, partition) = demo_preset(true, &model, Path::new(""), Path::new(""))
            .data
            .load()
            .unwrap();
        assert_eq!(partition.lt_train, m.lt_train_rows);
        assert_eq!(back.train.len(), m.lt_train_rows.len());
        assert_eq!(back.test.len(), world.test.len());
        assert_eq!(back.prompt_names(), world.prompt_names());
        for (j, &i) in m.lt_train_rows.iter().enumerate().step_by(97) {
            assert_eq!(back.train.labels[j], world.train.labels[i]);
            assert_eq!(back.train.decode(j).unwrap(), world.train.decode(i).unwrap());
        }
        for i in (0..world.test.len()).step_by(53) {
            assert_eq!(back.test.labels[i], world.test.labels[i]);
            assert_eq!(back.test.decode(i).unwrap(), world.test.decode(i).unwrap());
        }

        let opts = crate::clip::LoadOptions::default();
        let exported = crate::clip::Clip::load(&out.join("clip"), &opts).unwrap();
        let source = crate::clip::Clip::load(&model, &opts).unwrap();
        assert_eq!(exported.config, source.config);
        let px = crate::clip::ops::testutil::rand_tensor(&[2, 3, 32, 32], 3, 1.0);
        assert_eq!(
            crate::clip::ops::testutil::max_abs_diff(
                &exported.encode_images(&px).unwrap(),
                &source.encode_images(&px).unwrap()
            ),
            0.0
        );
    }
}
