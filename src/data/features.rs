//! Image-feature cache. The image encoder is frozen for prompt tuning and the adapter, so
//! its outputs can be stored: test features once, train features for V augmented views
//! (V = 0 means live encoding and no cache). A cache file is keyed by the model's
//! fingerprint, the dataset, the split, the transform and the view count; any difference
//! rebuilds it. Files are safetensors with the key in the metadata, memory-mapped when
//! read, and written atomically (temporary file, then rename).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, Images, Split, SplitKind};
use super::loader::{BatchLoader, LoaderConfig};
use super::transforms::{Mode, Transform};
use crate::clip::Clip;

/// Bumped whenever the cache layout or the feature computation changes.
pub const FORMAT_VERSION: u32 = 1;

/// Everything the cached features depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey {
    /// [`model_fingerprint`] of the checkpoint.
    pub model: String,
    /// Dataset name and any parameters that change its images.
    pub dataset: String,
    /// `train` or `test`.
    pub split: String,
    /// Transform name and parameters.
    pub transform: String,
    /// Views per image (1 for deterministic transforms).
    pub views: usize,
    /// Images in the split.
    pub count: usize,
    /// [`FORMAT_VERSION`].
    pub format: u32,
}

impl CacheKey {
    /// The file name of this key's cache inside a cache directory.
    pub fn file_name(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(self).expect("serializable").hash(&mut h);
        let safe: String = self
            .dataset
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{safe}-{}-{:016x}.safetensors", self.split, h.finish())
    }
}

/// Whether [`load_or_build`] found the features or computed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from an up-to-date file.
    Hit,
    /// Computed and written (no file, or a stale one).
    Built,
}

const KEY_FIELD: &str = "fedpurel.feature_cache.key";
const TENSOR: &str = "features";

/// A cheap, content-based fingerprint of a weights file: its length, its safetensors
/// header, and 64 blocks of 4 KiB spread over the data. Two checkpoints that differ in any
/// sampled block, header or size get different fingerprints; the file is not read whole.
pub fn model_fingerprint(weights: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(weights).with_context(|| format!("{}: cannot open", weights.display()))?;
    let len = f.metadata()?.len();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    len.hash(&mut h);
    let mut block = vec![0u8; 4096];
    for i in 0..64u64 {
        let pos = if len > 4096 { (len - 4096) * i / 63 } else { 0 };
        f.seek(SeekFrom::Start(pos))?;
        let n = f.read(&mut block)?;
        block[..n].hash(&mut h);
    }
    Ok(format!("{:016x}-{len}", h.finish()))
}

fn read_key(path: &Path) -> Result<CacheKey> {
    let mut f = std::fs::File::open(path)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        bail!("header of {n} bytes is implausible");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let v: serde_json::Value = serde_json::from_slice(&header)?;
    let key = v["__metadata__"][KEY_FIELD]
        .as_str()
        .ok_or_else(|| anyhow!("no cache key in the metadata"))?;
    Ok(serde_json::from_str(key)?)
}

/// Returns the features for `key` from `dir`, computing them with `build` (shape
/// `[views·count, E]` or `[count, E]`) when the cache is missing or stale.
pub fn load_or_build(
    dir: &Path,
    key: &CacheKey,
    device: &Device,
    build: impl FnOnce() -> Result<Tensor>,
) -> Result<(Tensor, CacheStatus)> {
    let path = dir.join(key.file_name());
    if path.is_file() {
        match read_key(&path) {
            Ok(found) if &found == key => {
                // SAFETY: read-only map of a file this process wrote atomically.
                let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
                    .map_err(|e| anyhow!("{}: unreadable feature cache: {e}", path.display()))?;
                let t = st
                    .load(TENSOR, device)
                    .map_err(|e| anyhow!("{}: unreadable feature cache: {e}", path.display()))?;
                if t.dim(0)? == key.count * key.views.max(1) {
                    return Ok((t, CacheStatus::Hit));
                }
                tracing::warn!(
                    "{}: feature count does not match the key, rebuilding",
                    path.display()
                );
            }
            Ok(_) => tracing::info!("{}: stale feature cache, rebuilding", path.display()),
            Err(e) => tracing::warn!("{}: unreadable feature cache ({e}), rebuilding", path.display()),
        }
    }
    let features = build()?;
    let rows = features.dim(0)?;
    if rows != key.count * key.views.max(1) {
        bail!(
            "feature cache: built {rows} rows for {} images × {} views",
            key.count,
            key.views.max(1)
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the cache directory", dir.display()))?;
    write_atomic(&path, &features, key)?;
    Ok((features, CacheStatus::Built))
}

fn write_atomic(path: &Path, features: &Tensor, key: &CacheKey) -> Result<()> {
    let meta = HashMap::from([(KEY_FIELD.to_string(), serde_json::to_string(key)?)]);
    let cpu = features.to_device(&Device::Cpu)?.contiguous()?;
    let bytes = safetensors::serialize([(TENSOR, &cpu)], Some(meta))
        .map_err(|e| anyhow!("{}: cannot serialize the feature cache: {e}", path.display()))?;
    crate::report::atomic::write(path, &bytes)
}

/// A content fingerprint of a split: its labels and its images (all bytes for in-memory
/// images, the paths for files).
pub fn split_fingerprint(split: &Split) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    split.labels.hash(&mut h);
    match &split.images {
        Images::Planes { width, height, data } => (width, height, data).hash(&mut h),
        Images::Files(paths) => paths.hash(&mut h),
    }
    format!("{:016x}", h.finish())
}

/// What to encode: a split of a dataset through a transform, `views` times.
#[derive(Debug, Clone)]
pub struct EncodeRequest {
    /// Which split.
    pub split: SplitKind,
    /// Samples to encode, in order (None: the whole split).
    pub indices: Option<Vec<usize>>,
    /// The pipeline.
    pub transform: Transform,
    /// Train (augmenting) or test mode.
    pub mode: Mode,
    /// Views per image (each with its own augmentation draw; 1 when deterministic).
    pub views: usize,
    /// Run seed for the augmentation streams.
    pub seed: u64,
    /// Images per encoder call.
    pub batch_size: usize,
}

/// Encodes the requested images of a split with the frozen image tower: `[views · N, E]`,
/// view-major (row v·N + i is view v of the i-th requested sample).
pub fn encode_split(clip: &Clip, dataset: &Arc<Dataset>, req: &EncodeRequest) -> Result<Tensor> {
    let indices: Vec<usize> = req
        .indices
        .clone()
        .unwrap_or_else(|| (0..dataset.split(req.split).len()).collect());
    let res = req.transform.resolution as usize;
    let mut rows = Vec::new();
    for view in 0..req.views.max(1) {
        let loader = BatchLoader::new(
            Arc::clone(dataset),
            LoaderConfig {
                split: req.split,
                indices: indices.clone(),
                batch_size: req.batch_size.max(1),
                drop_last: false,
                transform: req.transform,
                mode: req.mode,
                seed: req.seed,
                path: vec![view as u64],
                prefetch: 2,
            },
        );
        for batch in loader {
            let batch = batch?;
            let b = batch.labels.len();
            let pixels = Tensor::from_vec(batch.data, (b, 3, res, res), clip.device())?;
            rows.push(clip.encode_images(&pixels)?.to_dtype(candle_core::DType::F32)?);
        }
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// The cached features of a split, computing and storing them when missing or stale.
/// `weights` is the checkpoint's weights file (for the model fingerprint).
pub fn cached_split_features(
    cache_dir: &Path,
    weights: &Path,
    clip: &Clip,
    dataset: &Arc<Dataset>,
    req: &EncodeRequest,
) -> Result<(Tensor, CacheStatus)> {
    let split = dataset.split(req.split);
    let views = if req.transform.is_deterministic(req.mode) {
        1
    } else {
        req.views.max(1)
    };
    let subset = match &req.indices {
        Some(ix) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            ix.hash(&mut h);
            format!("-subset{:016x}", h.finish())
        }
        None => String::new(),
    };
    let count = req.indices.as_ref().map_or(split.len(), Vec::len);
    let key = CacheKey {
        model: model_fingerprint(weights)?,
        dataset: format!("{}-{}{subset}", dataset.name, split_fingerprint(split)),
        split: req.split.to_string(),
        transform: format!(
            "{:?}-{}-{:?}-seed{}",
            req.transform.kind,
            req.transform.resolution,
            req.mode,
            if views > 1 { req.seed } else { 0 }
        ),
        views,
        count,
        format: FORMAT_VERSION,
    };
    let req = EncodeRequest { views, ..req.clone() };
    load_or_build(cache_dir, &key, clip.device(), || {
        encode_split(clip, dataset, &req)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn key(dataset: &str) -> CacheKey {
        CacheKey {
            model: "m".into(),
            dataset: dataset.into(),
            split: "test".into(),
            transform: "cifar".into(),
            views: 1,
            count: 3,
            format: FORMAT_VERSION,
        }
    }

    #[test]
    fn builds_once_then_hits_and_rebuilds_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let feats = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let (a, s) = load_or_build(dir.path(), &key("cifar100"), &Device::Cpu, || Ok(feats.clone())).unwrap();
        assert_eq!(s, CacheStatus::Built);
        let (b, s) = load_or_build(dir.path(), &key("cifar100"), &Device::Cpu, || {
            panic!("must not rebuild")
        })
        .unwrap();
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        // Same file name, different content of the key → stale.
        let path = dir.path().join(key("cifar100").file_name());
        let mut other = key("cifar100");
        other.model = "other".into();
        write_atomic(&path, &feats, &other).unwrap();
        let (_, s) = load_or_build(dir.path(), &key("cifar100"), &Device::Cpu, || Ok(feats.clone())).unwrap();
        assert_eq!(s, CacheStatus::Built);
        // A corrupt file is rebuilt, not trusted.
        std::fs::write(&path, b"garbage").unwrap();
        let (_, s) = load_or_build(dir.path(), &key("cifar100"), &Device::Cpu, || Ok(feats.clone())).unwrap();
        assert_eq!(s, CacheStatus::Built);
        // A build with the wrong row count is an error and leaves no file behind.
        let wrong = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(load_or_build(dir.path(), &key("other-set"), &Device::Cpu, || Ok(wrong)).is_err());
        assert!(!dir.path().join(key("other-set").file_name()).exists());
    }

    /// Cached features equal the live encoder's, and a second call hits the cache.
    #[test]
    fn cached_features_equal_live_encoding() {
        use crate::clip::model::tests::fixture_dir;
        use crate::data::synthetic;
        use crate::data::transforms::TransformKind;
        let clip = Clip::load(&fixture_dir("hf"), &crate::clip::LoadOptions::default()).unwrap();
        let ds = Arc::new(
            synthetic::generate(&synthetic::SyntheticSpec {
                classes: 3,
                train_per_class: 2,
                test_per_class: 2,
                ..Default::default()
            })
            .unwrap(),
        );
        let req = EncodeRequest {
            split: SplitKind::Test,
            indices: None,
            transform: Transform::new(TransformKind::Cifar),
            mode: Mode::Test,
            views: 1,
            seed: 0,
            batch_size: 4,
        };
        let dir = tempfile::tempdir().unwrap();
        let weights = fixture_dir("hf").join("model.safetensors");
        let (a, s) = cached_split_features(dir.path(), &weights, &clip, &ds, &req).unwrap();
        assert_eq!(s, CacheStatus::Built);
        assert_eq!(a.dims(), &[6, 96]);
        let (b, s) = cached_split_features(dir.path(), &weights, &clip, &ds, &req).unwrap();
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        // Image by image through the live path.
        let img = ds.test.decode(4).unwrap();
        let px = crate::data::transforms::cifar(&img, 224);
        let live = clip
            .encode_images(&Tensor::from_vec(px, (1, 3, 224, 224), &Device::Cpu).unwrap())
            .unwrap();
        let e = crate::clip::ops::testutil::max_abs_diff(&live.squeeze(0).unwrap(), &a.get(4).unwrap());
        assert!(e < 1e-5, "cached vs live: {e}");
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        std::fs::write(&p, vec![1u8; 100_000]).unwrap();
        let a = model_fingerprint(&p).unwrap();
        let mut bytes = vec![1u8; 100_000];
        bytes[99_999] = 2;
        std::fs::write(&p, bytes).unwrap();
        assert_ne!(a, model_fingerprint(&p).unwrap());
    }
}
