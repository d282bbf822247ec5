//! `fedpurel model info`: the architecture found in a checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::clip::Checkpoint;

/// `fedpurel model …`
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// What to do with the model.
    #[command(subcommand)]
    pub action: ModelAction,
}

/// Model subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Print the architecture found in a checkpoint directory.
    Info {
        /// Checkpoint directory (Hugging Face or OpenAI layout, safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `fedpurel model …`.
pub fn run(args: ModelArgs) -> Result<()> {
    match args.action {
        ModelAction::Info { model, json } => info(&model, json),
    }
}

fn info(dir: &std::path::Path, as_json: bool) -> Result<()> {
    let ck = Checkpoint::open(dir)?;
    let c = &ck.config;
    if as_json {
        let v = json!({
            "path": dir.display().to_string(),
            "weights": ck.file.display().to_string(),
            "layout": match ck.layout { crate::clip::Layout::HuggingFace => "huggingface", crate::clip::Layout::OpenAi => "openai" },
            "config_source": ck.config_source,
            "parameters": ck.parameter_count(),
            "config": c,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("checkpoint   {}", ck.file.display());
    println!("layout       {}", ck.layout);
    println!("config       {}", ck.config_source);
    println!("parameters   {}", ck.parameter_count());
    println!("embed dim    {}", c.embed_dim);
    let v = &c.vision;
    println!(
        "vision       ViT patch {} at {} px ({} tokens), width {}, {} layers, {} heads, MLP {}",
        v.patch_size,
        v.image_size,
        v.tokens(),
        v.width,
        v.layers,
        v.heads,
        v.mlp_width
    );
    let t = &c.text;
    println!(
        "text         width {}, {} layers, {} heads, MLP {}, context {}, vocabulary {}",
        t.width, t.layers, t.heads, t.mlp_width, t.context_length, t.vocab_size
    );
    Ok(())
}
