//! `MODEL_CARD.md` of a model pretrained on the world: what it was trained on, its shape
//! and size, how it was trained and for how long, what it scores zero-shot, and the
//! command that reproduces it — every number from the run's [`PretrainReport`].

use crate::clip::config::ClipConfig;
use crate::data::world::{captions, Background, Domain, NUM_CLASSES};

use super::recipe::{PretrainReport, WorldPretrainSettings};

/// File name of the model card in a model directory.
pub const FILE: &str = "MODEL_CARD.md";

fn look_line(domain: Domain) -> String {
    let l = domain.look();
    let background = match l.background {
        Background::Studio => "light grey studio background",
        Background::Field => "soft two-colour patterned field background",
    };
    let clutter = match l.clutter {
        0 => "no clutter".to_string(),
        1 => "up to 1 clutter stroke".to_string(),
        n => format!("up to {n} clutter strokes"),
    };
    format!(
        "object radius {:.0}–{:.0} px, {background}, colour jitter σ {:.0}, colour cast ±{:.0} %, \
         {clutter}, pixel noise σ {:.0}",
        l.radius.0,
        l.radius.1,
        l.colour_jitter,
        100.0 * l.tint,
        l.noise_std
    )
}

fn duration(seconds: f64) -> String {
    if seconds >= 90.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.1} s")
    }
}

/// The model card of `report` (architecture `config`).
pub fn render(report: &PretrainReport, config: &ClipConfig) -> String {
    let s = &report.settings;
    let (t, v) = (&config.text, &config.vision);
    let z = &report.zero_shot;
    let chance = 100.0 / NUM_CLASSES as f64;
    let total_bytes: u64 = report.files.iter().map(|(_, n)| n).sum();
    let mut md = String::new();
    let mut line = |l: String| {
        md.push_str(&l);
        md.push('\n');
    };
    line("# Demo CLIP — a small CLIP pretrained on fedpurel's synthetic world".into());
    line(String::new());
    line(format!(
        "A {:.2} M-parameter CLIP (ViT image tower, causal text transformer) trained from \
         scratch by `fedpurel pretrain` — contrastive InfoNCE, both towers, every weight, with \
         fedpurel's explicit backward passes — on image–caption pairs of the synthetic world \
         (`src/data/world/`). It is the stand-in foundation model of `fedpurel demo`: no real \
         CLIP weights or image datasets can be downloaded where fedpurel is developed, so the \
         demo's whole setting (pretraining distribution, shifted long-tailed downstream task) \
         is synthetic. It knows only the world's words and images.",
        report.parameters as f64 / 1e6
    ));
    line(String::new());
    line(format!(
        "**Zero-shot top-1 accuracy** (prompt `{}`, {} classes, chance {chance:.2} %): \
         **{:.2} %** on the pretraining domain's test split, **{:.2} %** on the downstream \
         domain's ({} images each).",
        s.template, NUM_CLASSES, z.pretrain.accuracy, z.downstream.accuracy, z.downstream.images
    ));
    line(String::new());

    line("## Data".into());
    line(String::new());
    line(format!(
        "- **Classes**: {NUM_CLASSES} = 5 shapes × 4 colours × 3 textures, named \"texture colour \
         shape\" (\"striped red circle\"); 32 × 32 RGB images."
    ));
    line(format!(
        "- **Pretraining domain** (world seed {}, training split): {}.",
        s.world_seed,
        look_line(Domain::Pretrain)
    ));
    line(format!(
        "- **Pairs seen**: {} steps × {} = {} pairs, each a distinct image, classes exactly \
         balanced (every block of {NUM_CLASSES} consecutive pairs holds each class once, in a \
         seeded order); no augmentation (fresh images instead).",
        s.steps, s.batch, report.pairs_seen
    ));
    line(format!(
        "- **Captions**: {} full templates naming all three attributes in varied orders (\"a {{c}} \
         {{s}} with {{p}}.\") and, with probability {:.0} %, one of {} partial templates naming one \
         or two (\"a {{c}} shape.\"). {}",
        captions::FULL_TEMPLATES.len(),
        100.0 * captions::PARTIAL_PROBABILITY,
        captions::PARTIAL_TEMPLATES.len(),
        if s.multi_positive {
            "In a batch every caption true of an image's class counts as its positive \
             (multi-positive InfoNCE, `pretrain::loss::contrastive_loss_with`), so \"a red shape.\" \
             is not pushed away from the batch's other red objects."
        } else {
            "Only the drawn pairs are positives (plain InfoNCE)."
        }
    ));
    line(format!(
        "- **Downstream domain** (evaluation only here; the demo's federated task): {} — \
         backgrounds, clutter and colour cast never seen in pretraining.",
        look_line(Domain::Downstream)
    ));
    line("- **Tokenizer**: the world's CLIP-style byte-level BPE (`tokenizer.json`, `vocab.json`, `merges.txt`; \
          written by `data::world::vocab`).".to_string());
    line(String::new());

    line("## Architecture".into());
    line(String::new());
    line("| part | shape |".into());
    line("| --- | --- |".into());
    line(format!(
        "| image tower | ViT, {0} × {0} px, patch {1} ({2} tokens), width {3}, {4} blocks, {5} heads, MLP {6} |",
        v.image_size,
        v.patch_size,
        v.tokens(),
        v.width,
        v.layers,
        v.heads,
        v.mlp_width
    ));
    line(format!(
        "| text tower | causal transformer, vocabulary {}, context {}, width {}, {} blocks, {} heads, MLP {} |",
        t.vocab_size, t.context_length, t.width, t.layers, t.heads, t.mlp_width
    ));
    line(format!(
        "| joint space | {} dimensions, learned logit scale (clamped at 100) |",
        config.embed_dim
    ));
    line(format!(
        "| parameters | {} ({:.2} M), float32 |",
        report.parameters,
        report.parameters as f64 / 1e6
    ));
    line(String::new());
    line(format!(
        "Layout: Hugging Face `CLIPModel` (`config.json` + `model.safetensors`), QuickGELU, pre-LayerNorm; \
         {} bytes on disk in all ({:.2} MB) besides this card and `pretrain.json`:",
        total_bytes,
        total_bytes as f64 / 1e6
    ));
    line(String::new());
    for (name, bytes) in &report.files {
        line(format!("- `{name}`: {bytes} B"));
    }
    line(String::new());

    line("## Training".into());
    line(String::new());
    line(format!(
        "- Initialization: Hugging Face's CLIP scheme, seed {} (`clip::init`).",
        s.seed
    ));
    line(format!(
        "- AdamW (β 0.9 / 0.98, ε 1e-6, weight decay {} on linear-map matrices only), peak learning \
         rate {}, linear warm-up {} steps, cosine decay to {} × peak, {}.",
        s.weight_decay,
        s.lr,
        s.warmup_steps,
        s.min_lr_fraction,
        if s.max_grad_norm > 0.0 {
            format!("global gradient norm clipped at {}", s.max_grad_norm)
        } else {
            "no gradient clipping".to_string()
        }
    ));
    line(format!(
        "- Time: {} wall{} on {} threads, including {} zero-shot check(s) ({} images per class and domain).",
        duration(report.train_seconds),
        report
            .train_cpu_seconds
            .map_or(String::new(), |c| format!(", {} CPU", duration(c))),
        report.threads,
        report.history.len(),
        s.eval_per_class
    ));
    line(format!(
        "- End of training (mean of the last {} steps): loss {:.3}, in-batch image → text accuracy {:.1} %.",
        s.log_every.max(1),
        report.final_loss,
        100.0 * report.final_in_batch_accuracy
    ));
    line("- `training-log.jsonl`: the loss, in-batch accuracies, logit scale, learning rate and gradient norm \
          averaged over every window of steps, and each zero-shot check.".to_string());
    line(String::new());

    line("## Zero-shot accuracy".into());
    line(String::new());
    line(format!(
        "Prompt template `{}` filled with each class name; top-1 over all {NUM_CLASSES} classes; \
         balanced test splits (world seed {}, the first {} images per class — the downstream one \
         is the global test set of `fedpurel demo`). Attribute columns: how often the predicted \
         class has the right shape, colour, texture.",
        s.template, s.world_seed, s.final_eval_per_class
    ));
    line(String::new());
    line("| test split | images | top-1 | shape | colour | texture |".into());
    line("| --- | --- | --- | --- | --- | --- |".into());
    for (name, score) in [
        ("pretraining domain", &z.pretrain),
        ("downstream domain", &z.downstream),
    ] {
        line(format!(
            "| {name} | {} | {:.2} % | {:.1} % | {:.1} % | {:.1} % |",
            score.images,
            score.accuracy,
            score.attribute_accuracy[0],
            score.attribute_accuracy[1],
            score.attribute_accuracy[2]
        ));
    }
    line(format!("| chance | | {chance:.2} % | 20 % | 25 % | 33.3 % |"));
    if !report.history.is_empty() {
        line(String::new());
        line(format!(
            "During training ({} images per class and domain):",
            s.eval_per_class
        ));
        line(String::new());
        line("| step | pretraining domain | downstream domain |".into());
        line("| --- | --- | --- |".into());
        for h in &report.history {
            line(format!(
                "| {} | {:.1} % | {:.1} % |",
                h.step, h.pretrain.accuracy, h.downstream.accuracy
            ));
        }
    }
    line(String::new());

    line("## Reproduce".into());
    line(String::new());
    line("```bash".into());
    line(format!(
        "cargo run --release -- {}",
        report.command.trim_start_matches("fedpurel ")
    ));
    line("```".into());
    line(String::new());
    let defaults = if *s == WorldPretrainSettings::default() {
        "These are the defaults of `fedpurel pretrain` (the shipped demo CLIP's recipe), so \
         `fedpurel pretrain --out DIR` alone does the same. "
    } else {
        ""
    };
    line(format!(
        "{defaults}Same settings → the same `model.safetensors`, byte for byte, on the same \
         machine and thread count (every random draw comes from a named seeded stream); another \
         CPU may round differently in its matmul kernels. Add `--force` to replace an existing \
         directory (the new one is swapped in only once complete)."
    ));
    line(String::new());
    line("## Limitations".into());
    line(String::new());
    line(
        "A toy: tiny images, a closed vocabulary of the world's words, 60 classes. It exists so \
         the demo has a real pretrained foundation model whose zero-shot knowledge fine-tuning can \
         help or harm; its numbers say nothing about CLIP ViT-B/16 on real data."
            .into(),
    );
    md
}
