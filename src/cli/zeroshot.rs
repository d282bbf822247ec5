//! `fedpurel zeroshot`: classify images with a CLIP checkpoint and a prompt template.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use serde::Serialize;

use crate::clip::preprocess::{clip_preprocess, load_rgb};
use crate::clip::tokenizer::ClipTokenizer;
use crate::clip::zeroshot::ZeroShotHead;
use crate::clip::{Clip, LoadOptions};

/// `fedpurel zeroshot`
#[derive(Debug, Args)]
pub struct ZeroshotArgs {
    /// Checkpoint directory (weights, config, tokenizer files).
    #[arg(long)]
    pub model: PathBuf,
    /// Class-name file: one name per line (underscores become spaces in prompts).
    #[arg(long)]
    pub classes: PathBuf,
    /// Image files, or folders whose images (png, jpg, jpeg, bmp, webp) are classified.
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Prompt template with one `{}` for the class name.
    #[arg(long, default_value = "a photo of a {}.")]
    pub template: String,
    /// Classes listed per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Images encoded per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight and compute precision: f32, f16, bf16 (half precision is meant for GPUs).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Print JSON: {"classes": [...], "images": [{"path", "logits", "top"}]}.
    #[arg(long)]
    pub json: bool,
}

/// One image's scores.
#[derive(Debug, Serialize)]
pub struct ImageScores {
    /// The image file.
    pub path: String,
    /// exp(logit_scale) · cosine similarity to every class, in class order.
    pub logits: Vec<f32>,
    /// Indices of the top-k classes, best first.
    pub top: Vec<usize>,
}

#[derive(Serialize)]
struct Output<'a> {
    classes: &'a [String],
    template: &'a str,
    images: Vec<ImageScores>,
}

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "webp", "JPEG"];

/// Reads a class-name file: one name per non-empty line.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the class-name file", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{}: no class names (expected one per line)", path.display());
    }
    Ok(names)
}

/// Expands files and folders into a sorted list of image files.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list the folder", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x))
                })
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no images found (expected files ending in {})",
                    p.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such image file or folder", p.display());
        }
    }
    Ok(out)
}

/// Scores every image against every class.
pub fn classify(
    clip: &Clip,
    head: &ZeroShotHead,
    images: &[PathBuf],
    batch_size: usize,
    top_k: usize,
) -> Result<Vec<ImageScores>> {
    let res = clip.config.vision.image_size;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * res * res);
        for path in chunk {
            let img = load_rgb(path)?;
            pixels.extend(clip_preprocess(&img, res as u32));
        }
        let batch = Tensor::from_vec(pixels, (chunk.len(), 3, res, res), clip.device())?;
        let logits = head.logits(&clip.encode_images(&batch)?)?.to_vec2::<f32>()?;
        for (path, row) in chunk.iter().zip(logits) {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(top_k.max(1));
            out.push(ImageScores {
                path: path.display().to_string(),
                logits: row,
                top: order,
            });
        }
    }
    Ok(out)
}

/// Runs `fedpurel zeroshot`.
pub fn run(args: ZeroshotArgs) -> Result<()> {
    let device = crate::device::parse_device(&args.device)?;
    let dtype = crate::device::parse_dtype(&args.dtype)?;
    let clip = Clip::load(&args.model, &LoadOptions { device, dtype })?;
    let tokenizer = ClipTokenizer::from_dir(&args.model)?;
    let classes = read_class_names(&args.classes)?;
    let images = collect_images(&args.images)?;
    let head = ZeroShotHead::build(&clip, &tokenizer, &classes, &args.template)?;
    let scores = classify(&clip, &head, &images, args.batch_size, args.top_k)?;
    if args.json {
        let out = Output {
            classes: &classes,
            template: &args.template,
            images: scores,
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let softmax = |row: &[f32]| -> Vec<f32> {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    };
    for img in &scores {
        println!("{}", img.path);
        let p = softmax(&img.logits);
        for &c in &img.top {
            println!("  {:>6.2}%  {:>8.3}  {}", 100.0 * p[c], img.logits[c], classes[c]);
        }
    }
    Ok(())
}
