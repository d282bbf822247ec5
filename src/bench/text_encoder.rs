//! Text-encoder workload: the ViT-B/16-sized text tower (12 layers, width 512, random
//! weights) over CoOp prompts "X X X X {class}." for the CIFAR-100 classes, forward plus
//! a backward for two cotangents, on the plain 77-position path and the exact fast path
//! (truncation at the longest EOT + shared prefix computed once).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::{best_time, BenchResult};
use crate::clip::config::{block_flops, ClipConfig};
use crate::clip::random::{text_encoder, uniform};
use crate::clip::text::{PromptBatch, TextEncoder, TextPath};
use crate::clip::tokenizer::ClipTokenizer;

/// CIFAR-100 fine label names in label order (as distributed, underscores included).
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Settings of the text-encoder workload.
#[derive(Debug, Clone)]
pub struct TextBenchSettings {
    /// Number of classes (prompts); class names cycle through CIFAR-100's.
    pub classes: usize,
    /// Shared context vectors.
    pub n_ctx: usize,
    /// Timed repetitions (best is reported).
    pub reps: usize,
    /// Cotangents in the backward (FedPuReL uses 2).
    pub cotangents: usize,
    /// Also time the plain 77-position path.
    pub plain: bool,
}

/// FLOPs of a block's input-VJP for K cotangents: every projection once more per
/// cotangent, and four attention matmuls instead of two.
fn block_backward_flops(width: usize, mlp: usize, tokens: f64, keys: f64, k: usize) -> f64 {
    let d = width as f64;
    let m = mlp as f64;
    k as f64 * (2.0 * tokens * (4.0 * d * d + 2.0 * d * m) + 2.0 * 2.0 * 2.0 * tokens * keys * d)
}

/// The projections' and MLP's share of [`block_flops`] / [`block_backward_flops`] per
/// token (forward; the backward repeats it per cotangent).
fn projection_flops_per_token(width: usize, mlp: usize) -> f64 {
    let (d, m) = (width as f64, mlp as f64);
    2.0 * (4.0 * d * d + 2.0 * d * m)
}

/// The part of [`projection_flops_per_token`] after the attention (output projection
/// and MLP), which the last block runs for the EOT rows alone.
fn after_attention_flops_per_token(width: usize, mlp: usize) -> f64 {
    let (d, m) = (width as f64, mlp as f64);
    2.0 * (d * d + 2.0 * d * m)
}

/// How a pass laid out its rows: the body's packed row count when it ran packed,
/// whether the last block ran past its attention for the EOT rows alone, and whether the
/// first block's q/k/v input VJP ran for the prefix's rows alone (the context's
/// cotangents being all the backward returns).
#[derive(Debug, Clone, Copy)]
struct RowLayout {
    packed_tokens: Option<usize>,
    last_block_eot_only: bool,
    prefix_cotangents_alone: bool,
}

/// Forward and backward FLOPs of one pass of the text tower on a path, as computed: the
/// body's projections and MLP on the packed rows when it ran packed (attention still
/// spans each sequence padded to the longest), and the last block's output projection
/// and MLP on the `n` EOT rows alone when it ran so.
fn path_flops(
    cfg: &ClipConfig,
    n: usize,
    prefix: usize,
    seq: usize,
    k: usize,
    layout: RowLayout,
) -> (f64, f64) {
    let t = &cfg.text;
    let layers = t.layers as f64;
    let body_tokens = (n * (seq - prefix)) as f64;
    let mut fwd = block_flops(t.width, t.mlp_width, body_tokens, seq as f64);
    let mut bwd = block_backward_flops(t.width, t.mlp_width, body_tokens, seq as f64, k);
    if let Some(packed) = layout.packed_tokens {
        let saved = (body_tokens - packed as f64) * projection_flops_per_token(t.width, t.mlp_width);
        fwd -= saved;
        bwd -= k as f64 * saved;
    }
    if prefix > 0 {
        fwd += block_flops(t.width, t.mlp_width, prefix as f64, prefix as f64);
        bwd += block_backward_flops(t.width, t.mlp_width, prefix as f64, prefix as f64, k);
    }
    let (mut fwd, mut bwd) = (fwd * layers, bwd * layers);
    let body_rows = layout.packed_tokens.unwrap_or(n * (seq - prefix));
    if layout.last_block_eot_only {
        let saved = (prefix + body_rows - n) as f64 * after_attention_flops_per_token(t.width, t.mlp_width);
        fwd -= saved;
        bwd -= k as f64 * saved;
    }
    if layout.prefix_cotangents_alone {
        let d = t.width as f64;
        bwd -= k as f64 * body_rows as f64 * 2.0 * 3.0 * d * d;
    }
    (fwd, bwd)
}

/// Runs the workload and returns one result per path plus the forward-only rows.
pub fn run(
    settings: &TextBenchSettings,
    tokenizer: &ClipTokenizer,
    device: &Device,
    peak_gflops: f64,
) -> Result<Vec<BenchResult>> {
    let cfg = ClipConfig::vit_b16();
    let mut enc = text_encoder(&cfg, cfg.text.vocab_size, 7, device)?;
    // As a fine-tuning run holds the frozen tower (`Clip::prepare_frozen`).
    enc.prepare_frozen()?;
    let n = settings.classes;
    let ctx_words = vec!["X"; settings.n_ctx].join(" ");
    let prompts: Vec<String> = (0..n)
        .map(|i| format!("{ctx_words} {}.", CIFAR100_CLASSES[i % 100].replace('_', " ")))
        .collect();
    let toks = tokenizer.encode_batch(&prompts)?;
    let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.ids.clone()).collect();
    let eot: Vec<usize> = toks.iter().map(|t| t.eot).collect();
    let emb = enc.embed_tokens(&ids)?;
    let ctx = uniform(&[settings.n_ctx, cfg.text.width], 11, 0.02, device)?
        .unsqueeze(0)?
        .repeat((n, 1, 1))?;
    let s = cfg.text.context_length;
    let emb = Tensor::cat(
        &[
            &emb.narrow(1, 0, 1)?,
            &ctx,
            &emb.narrow(1, 1 + settings.n_ctx, s - 1 - settings.n_ctx)?,
        ],
        1,
    )?;
    let batch = PromptBatch {
        embeddings: emb,
        eot: eot.clone(),
    };
    let prefix = 1 + settings.n_ctx;
    let max_eot = *eot.iter().max().unwrap_or(&0);
    let k = settings.cotangents;
    let d_feat = uniform(&[k, n, cfg.embed_dim], 13, 1.0, device)?;

    let mut results = Vec::new();
    let mut times = Vec::new();
    let paths = [
        ("plain-77", TextPath::Plain, s, 0),
        (
            "fast-truncated+shared-prefix",
            TextPath::SharedPrefix(prefix),
            max_eot + 1,
            prefix,
        ),
    ];
    for (label, path, seq, pre) in paths
        .into_iter()
        .filter(|p| settings.plain || p.1 != TextPath::Plain)
    {
        super::mem::reset_peak();
        let fb = best_time(settings.reps, || {
            forward_backward(&enc, &batch, path, &d_feat, settings.n_ctx, device)
        })?;
        let fo = best_time(settings.reps, || {
            let f = enc.forward(&batch, path, None, false)?.0;
            device.synchronize()?;
            Ok(f)
        })?;
        // The packed body runs each class only up to its EOT.
        let (_, tape) = enc.forward(&batch, path, None, true)?;
        let packed = tape
            .as_ref()
            .is_some_and(|t| t.is_packed())
            .then(|| eot.iter().map(|&e| e + 1 - pre).sum::<usize>());
        let layout = RowLayout {
            packed_tokens: packed,
            last_block_eot_only: tape.as_ref().is_some_and(|t| t.last_block_eot_only()),
            prefix_cotangents_alone: tape.is_some_and(|t| t.prefix_in_body()),
        };
        let (fwd, bwd) = path_flops(&cfg, n, pre, seq, k, layout);
        let mut rows = match packed {
            Some(r) => format!(", body packed into {r} rows"),
            None => String::new(),
        };
        if layout.last_block_eot_only {
            rows.push_str(", last block past attention on the EOT rows");
        }
        if layout.prefix_cotangents_alone {
            rows.push_str(", first block's input VJP on the prefix rows");
        }
        let detail = format!("{n} classes × {seq} positions (prefix {pre}{rows}), {k} cotangents");
        results.push(BenchResult::new(
            format!("text-encoder/{label}/forward"),
            fo,
            fwd,
            peak_gflops,
            detail.clone(),
        ));
        results.push(BenchResult::new(
            format!("text-encoder/{label}/forward+backward{k}"),
            fb,
            fwd + bwd,
            peak_gflops,
            detail,
        ));
        times.push(fb);
    }
    let speedup = if times.len() == 2 {
        times[0] / times[1]
    } else {
        f64::NAN
    };
    for r in results
        .iter_mut()
        .filter(|r| r.name.contains("fast") && r.name.contains("backward"))
    {
        r.detail = if speedup.is_nan() {
            format!(
                "{}; plain-77 not run (its activations would need ≈ 30 GB at this size)",
                r.detail
            )
        } else {
            format!("{}; {speedup:.1}× faster than plain-77", r.detail)
        };
    }
    Ok(results)
}

fn forward_backward(
    enc: &TextEncoder,
    batch: &PromptBatch,
    path: TextPath,
    d_feat: &Tensor,
    n_ctx: usize,
    device: &Device,
) -> Result<Tensor> {
    // As a shared-context prompt learner asks for its gradient (`PromptLearner::ctx_grad`).
    let (_, tape) = enc.forward(batch, path, None, true)?;
    let g = enc.shared_positions_backward(tape.as_ref().expect("tape"), d_feat, 1, n_ctx)?;
    device.synchronize()?;
    Ok(g.to_dtype(DType::F32)?)
}
