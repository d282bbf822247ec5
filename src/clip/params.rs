//! Every CLIP parameter, named once. A [`Part`] says where a tensor sits in the encoders
//! (which tower, which block, which projection, weight or bias); [`Part::name`] gives its
//! canonical Hugging Face `CLIPModel` key and [`Part::shape`] its shape for a
//! [`ClipConfig`]; [`parts`] walks them all in a fixed order. Loading the encoders,
//! collecting their weights or weight gradients by name ([`super::weights`]), fresh
//! initialization ([`super::init`]) and the OpenAI key mapping all go through this walk,
//! so a parameter's key is written here and nowhere else.

use super::config::ClipConfig;

/// The logit scale's key (a scalar: ln of the multiplier of cosine similarities).
pub const LOGIT_SCALE: &str = "logit_scale";

/// One of the two towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tower {
    /// The text transformer (`text_model.*`).
    Text,
    /// The vision transformer (`vision_model.*`).
    Vision,
}

/// The weight (matrix, or a LayerNorm's γ) or the bias (a LayerNorm's β) of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wb {
    /// `….weight`.
    Weight,
    /// `….bias`.
    Bias,
}

/// A layer of a residual attention block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockLayer {
    /// Query projection (fused with k and v in the encoders).
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    Out,
    /// Pre-attention LayerNorm.
    Ln1,
    /// MLP up projection.
    Fc1,
    /// MLP down projection.
    Fc2,
    /// Pre-MLP LayerNorm.
    Ln2,
}

impl BlockLayer {
    /// The block's layers in checkpoint order.
    pub const ALL: [BlockLayer; 8] = [
        BlockLayer::Q,
        BlockLayer::K,
        BlockLayer::V,
        BlockLayer::Out,
        BlockLayer::Ln1,
        BlockLayer::Fc1,
        BlockLayer::Fc2,
        BlockLayer::Ln2,
    ];

    /// The key of the layer within its block.
    fn key(self) -> &'static str {
        match self {
            BlockLayer::Q => "self_attn.q_proj",
            BlockLayer::K => "self_attn.k_proj",
            BlockLayer::V => "self_attn.v_proj",
            BlockLayer::Out => "self_attn.out_proj",
            BlockLayer::Ln1 => "layer_norm1",
            BlockLayer::Fc1 => "mlp.fc1",
            BlockLayer::Fc2 => "mlp.fc2",
            BlockLayer::Ln2 => "layer_norm2",
        }
    }
}

/// Where one parameter sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The text tower's token embedding `[vocab, D]`.
    TokenEmbedding,
    /// A tower's positional embedding `[positions, D]`.
    Positional(Tower),
    /// The vision tower's class token `[D]`.
    ClassEmbedding,
    /// The vision tower's patch embedding, a convolution `[D, 3, p, p]`.
    Patch,
    /// The vision tower's LayerNorm before the blocks.
    PreNorm(Wb),
    /// A layer of block `index` of a tower.
    Block(Tower, usize, BlockLayer, Wb),
    /// A tower's LayerNorm after the blocks (text: `final_layer_norm`, vision:
    /// `post_layernorm`).
    FinalNorm(Tower, Wb),
    /// A tower's projection into the joint space `[E, D]`.
    Projection(Tower),
    /// The logit scale (a scalar: ln of the multiplier of cosine similarities).
    LogitScale,
}

impl Part {
    /// The canonical (Hugging Face `CLIPModel`) key.
    pub fn name(&self) -> String {
        let wb = |w: &Wb| match w {
            Wb::Weight => "weight",
            Wb::Bias => "bias",
        };
        let tower = |t: &Tower| match t {
            Tower::Text => "text_model",
            Tower::Vision => "vision_model",
        };
        match self {
            Part::TokenEmbedding => "text_model.embeddings.token_embedding.weight".into(),
            Part::Positional(t) => format!("{}.embeddings.position_embedding.weight", tower(t)),
            Part::ClassEmbedding => "vision_model.embeddings.class_embedding".into(),
            Part::Patch => "vision_model.embeddings.patch_embedding.weight".into(),
            Part::PreNorm(w) => format!("vision_model.pre_layrnorm.{}", wb(w)),
            Part::Block(t, i, layer, w) => {
                format!("{}.encoder.layers.{i}.{}.{}", tower(t), layer.key(), wb(w))
            }
            Part::FinalNorm(Tower::Text, w) => format!("text_model.final_layer_norm.{}", wb(w)),
            Part::FinalNorm(Tower::Vision, w) => format!("vision_model.post_layernorm.{}", wb(w)),
            Part::Projection(Tower::Text) => "text_projection.weight".into(),
            Part::Projection(Tower::Vision) => "visual_projection.weight".into(),
            Part::LogitScale => LOGIT_SCALE.into(),
        }
    }

    /// The tower a parameter belongs to (the logit scale: neither).
    pub fn tower(&self) -> Option<Tower> {
        match self {
            Part::TokenEmbedding => Some(Tower::Text),
            Part::ClassEmbedding | Part::Patch | Part::PreNorm(_) => Some(Tower::Vision),
            Part::Positional(t) | Part::Block(t, ..) | Part::FinalNorm(t, _) | Part::Projection(t) => {
                Some(*t)
            }
            Part::LogitScale => None,
        }
    }

    /// Its shape in a CLIP of architecture `c`.
    pub fn shape(&self, c: &ClipConfig) -> Vec<usize> {
        let (t, v) = (&c.text, &c.vision);
        let (d, f) = match self.tower() {
            Some(Tower::Text) => (t.width, t.mlp_width),
            _ => (v.width, v.mlp_width),
        };
        match self {
            Part::TokenEmbedding => vec![t.vocab_size, t.width],
            Part::Positional(Tower::Text) => vec![t.context_length, t.width],
            Part::Positional(Tower::Vision) => vec![v.tokens(), v.width],
            Part::ClassEmbedding | Part::PreNorm(_) | Part::FinalNorm(..) => vec![d],
            Part::Patch => vec![v.width, 3, v.patch_size, v.patch_size],
            Part::Block(_, _, layer, wb) => match (layer, wb) {
                (BlockLayer::Fc1, Wb::Weight) => vec![f, d],
                (BlockLayer::Fc1, Wb::Bias) => vec![f],
                (BlockLayer::Fc2, Wb::Weight) => vec![d, f],
                (_, Wb::Weight) if !matches!(layer, BlockLayer::Ln1 | BlockLayer::Ln2) => vec![d, d],
                _ => vec![d],
            },
            Part::Projection(_) => vec![c.embed_dim, d],
            Part::LogitScale => vec![],
        }
    }
}

/// The parameters of block `index` of `tower`, in checkpoint order.
pub fn block_parts(tower: Tower, index: usize) -> impl Iterator<Item = Part> {
    BlockLayer::ALL
        .into_iter()
        .flat_map(move |l| [Wb::Weight, Wb::Bias].map(|w| Part::Block(tower, index, l, w)))
}

/// Every parameter of a CLIP with this architecture, in a fixed order: the text tower,
/// the vision tower, the two projections, the logit scale.
pub fn parts(c: &ClipConfig) -> Vec<Part> {
    let mut out = vec![Part::TokenEmbedding, Part::Positional(Tower::Text)];
    out.extend((0..c.text.layers).flat_map(|i| block_parts(Tower::Text, i)));
    out.extend([
        Part::FinalNorm(Tower::Text, Wb::Weight),
        Part::FinalNorm(Tower::Text, Wb::Bias),
        Part::ClassEmbedding,
        Part::Patch,
        Part::Positional(Tower::Vision),
        Part::PreNorm(Wb::Weight),
        Part::PreNorm(Wb::Bias),
    ]);
    out.extend((0..c.vision.layers).flat_map(|i| block_parts(Tower::Vision, i)));
    out.extend([
        Part::FinalNorm(Tower::Vision, Wb::Weight),
        Part::FinalNorm(Tower::Vision, Wb::Bias),
        Part::Projection(Tower::Text),
        Part::Projection(Tower::Vision),
        Part::LogitScale,
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::checkpoint::WeightSource;

    /// The walk names every key of a real checkpoint (the tiny fixture CLIP, Hugging
    /// Face layout) with its shape, each once, and nothing else.
    #[test]
    fn the_walk_is_exactly_the_keys_and_shapes_of_a_checkpoint() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf");
        let ck = crate::clip::Checkpoint::open(&dir).unwrap();
        let c = ck.config().clone();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut keys: Vec<String> = file
            .names()
            .into_iter()
            .filter(|k| !k.ends_with("position_ids"))
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        let mut walked: Vec<String> = parts(&c).iter().map(Part::name).collect();
        walked.sort();
        assert_eq!(walked, keys);
        for p in parts(&c) {
            assert_eq!(
                file.tensor(&p.name()).unwrap().shape(),
                p.shape(&c).as_slice(),
                "{p:?}"
            );
        }
    }
}
