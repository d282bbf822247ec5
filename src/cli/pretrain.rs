//! `fedpurel pretrain`: pretrain the small demo CLIP on the synthetic world and write its
//! model directory (the recipe and the directory's contents are
//! [`crate::pretrain::recipe`]'s). Every flag defaults to the shipped model's setting, so
//! `fedpurel pretrain --out DIR` reproduces `assets/demo-clip`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::pretrain::pipeline::{pretrain_world, Event};
use crate::pretrain::recipe::{Architecture, WorldPretrainSettings};

fn defaults() -> WorldPretrainSettings {
    WorldPretrainSettings::default()
}

/// Arguments of `fedpurel pretrain` (defaults: the shipped demo CLIP's recipe).
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Model directory to write (e.g. assets/demo-clip).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists (swapped in only once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Seed of the initial weights and the batches' class order.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Seed of the world (images and captions; the demo's task is world seed 0).
    #[arg(long, default_value_t = defaults().world_seed)]
    pub world_seed: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = defaults().steps)]
    pub steps: usize,
    /// Image–caption pairs per batch.
    #[arg(long, default_value_t = defaults().batch)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = defaults().lr)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = defaults().warmup_steps)]
    pub warmup_steps: usize,
    /// Floor of the cosine decay as a fraction of the peak learning rate.
    #[arg(long, default_value_t = defaults().min_lr_fraction)]
    pub min_lr_fraction: f64,
    /// AdamW decoupled weight decay (linear-map matrices only).
    #[arg(long, default_value_t = defaults().weight_decay)]
    pub weight_decay: f64,
    /// Clip the global gradient norm at this value (0: no clipping).
    #[arg(long, default_value_t = defaults().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Only the drawn pairs are positives (default: every caption true of an image).
    #[arg(long)]
    pub single_positive: bool,
    /// Vision patch side (divides 32).
    #[arg(long, default_value_t = defaults().architecture.patch_size)]
    pub patch_size: usize,
    /// Vision width.
    #[arg(long, default_value_t = defaults().architecture.vision_width)]
    pub vision_width: usize,
    /// Vision blocks.
    #[arg(long, default_value_t = defaults().architecture.vision_layers)]
    pub vision_layers: usize,
    /// Text width.
    #[arg(long, default_value_t = defaults().architecture.text_width)]
    pub text_width: usize,
    /// Text blocks.
    #[arg(long, default_value_t = defaults().architecture.text_layers)]
    pub text_layers: usize,
    /// Joint embedding width.
    #[arg(long, default_value_t = defaults().architecture.embed_dim)]
    pub embed_dim: usize,
    /// Attention head width of both towers (heads = width / head width).
    #[arg(long, default_value_t = defaults().architecture.head_width)]
    pub head_width: usize,
    /// Zero-shot check every this many steps (0: only at the end).
    #[arg(long, default_value_t = defaults().eval_every)]
    pub eval_every: usize,
    /// Test images per class and domain of the checks during training.
    #[arg(long, default_value_t = defaults().eval_per_class)]
    pub eval_per_class: usize,
    /// Test images per class and domain of the final evaluation (the model card's).
    #[arg(long, default_value_t = defaults().final_eval_per_class)]
    pub final_eval_per_class: usize,
    /// Steps averaged into one line of training-log.jsonl.
    #[arg(long, default_value_t = defaults().log_every)]
    pub log_every: usize,
    /// Zero-shot prompt template.
    #[arg(long, default_value_t = defaults().template)]
    pub template: String,
}

impl PretrainArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> WorldPretrainSettings {
        WorldPretrainSettings {
            seed: self.seed,
            world_seed: self.world_seed,
            architecture: Architecture {
                patch_size: self.patch_size,
                vision_width: self.vision_width,
                vision_layers: self.vision_layers,
                text_width: self.text_width,
                text_layers: self.text_layers,
                embed_dim: self.embed_dim,
                head_width: self.head_width,
            },
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            min_lr_fraction: self.min_lr_fraction,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            multi_positive: !self.single_positive,
            eval_every: self.eval_every,
            eval_per_class: self.eval_per_class,
            final_eval_per_class: self.final_eval_per_class,
            template: self.template.clone(),
            log_every: self.log_every,
        }
    }
}

/// Runs `fedpurel pretrain`.
pub fn run(args: PretrainArgs) -> Result<()> {
    let settings = args.settings();
    let bar = ProgressBar::new(settings.steps as u64).with_style(
        ProgressStyle::with_template("pretrain [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})  {msg}")
            .context("progress template")?,
    );
    let mut last_eval = String::new();
    let report = pretrain_world(&settings, &args.out, args.force, &mut |event| match event {
        Event::Step(s) => {
            bar.set_position(s.step as u64 + 1);
            bar.set_message(format!(
                "loss {:.3}  in-batch acc {:.0} %  {:.0} img/s{last_eval}",
                s.loss.loss,
                100.0 * s.loss.image_to_text_accuracy,
                s.images_per_second()
            ));
        }
        Event::Eval(e) => {
            last_eval = format!(
                "  zero-shot {:.1} % / {:.1} %",
                e.pretrain.accuracy, e.downstream.accuracy
            );
            // Printed also when stderr is not a terminal (the bar is hidden then).
            bar.suspend(|| {
                eprintln!(
                    "step {:>6}: zero-shot {:.2} % on the pretraining domain, {:.2} % on the downstream domain ({} images each)",
                    e.step, e.pretrain.accuracy, e.downstream.accuracy, e.pretrain.images
                )
            });
        }
        Event::Phase(p) => bar.set_message(p.to_string()),
    })?;
    bar.finish_and_clear();
    let z = &report.zero_shot;
    println!(
        "wrote {} ({} parameters, {:.2} MB of files)",
        args.out.display(),
        report.parameters,
        report.files.iter().map(|(_, n)| *n).sum::<u64>() as f64 / 1e6
    );
    println!(
        "trained {} steps × {} pairs in {:.1} min wall{}",
        settings.steps,
        settings.batch,
        report.train_seconds / 60.0,
        report
            .train_cpu_seconds
            .map_or(String::new(), |c| format!(", {:.1} min CPU", c / 60.0))
    );
    println!(
        "zero-shot (`{}`): {:.2} % on the pretraining domain, {:.2} % on the downstream domain (chance {:.2} %)",
        settings.template,
        z.pretrain.accuracy,
        z.downstream.accuracy,
        100.0 / crate::data::world::NUM_CLASSES as f64
    );
    println!("model card: {}", args.out.join("MODEL_CARD.md").display());
    Ok(())
}
