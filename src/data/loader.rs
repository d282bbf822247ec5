//! A batch iterator over a client's samples: decode + transform in parallel (rayon), with
//! a bounded number of batches prepared ahead.
//!
//! A producer thread walks the given index order in batches; each batch's images are
//! decoded and transformed on the rayon pool and sent through a channel holding at most
//! `prefetch` finished batches, so memory stays bounded however fast the consumer is.
//! Augmentation of sample `pos` of batch `b` draws from
//! `rng::substream(seed, "augment", [path…, b, pos])`: the output does not depend on
//! thread scheduling, and changing `path` (say `[round, client]`) gives fresh views.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::dataset::{Dataset, SplitKind};
use super::transforms::{Mode, Transform};
use crate::rng;

/// One batch: `labels.len()` images of `3 × R × R` floats, back to back (`[B, 3, R, R]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Pixel data, `[B, 3, R, R]` row-major.
    pub data: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// The samples' indices in their split.
    pub indices: Vec<usize>,
}

/// What to iterate and how.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Which split the indices refer to.
    pub split: SplitKind,
    /// Sample indices, in the order to batch them.
    pub indices: Vec<usize>,
    /// Batch size B.
    pub batch_size: usize,
    /// Drop a last batch smaller than B.
    pub drop_last: bool,
    /// The pipeline.
    pub transform: Transform,
    /// Train (augmenting) or test.
    pub mode: Mode,
    /// Run seed of the augmentation streams.
    pub seed: u64,
    /// Sub-key of this pass's augmentation streams (e.g. `[round, client]`).
    pub path: Vec<u64>,
    /// Finished batches held ahead of the consumer (≥ 1).
    pub prefetch: usize,
}

/// Iterator of [`Batch`]es; see the module documentation.
pub struct BatchLoader {
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl BatchLoader {
    /// Starts producing batches of `cfg.indices` from `dataset`.
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig) -> Self {
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let worker = std::thread::spawn(move || {
            let bs = cfg.batch_size.max(1);
            for (b, chunk) in cfg.indices.chunks(bs).enumerate() {
                if cfg.drop_last && chunk.len() < bs {
                    break;
                }
                let batch = make_batch(&dataset, &cfg, b as u64, chunk);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break; // consumer gone, or error delivered
                }
            }
        });
        BatchLoader {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

fn make_batch(ds: &Dataset, cfg: &LoaderConfig, b: u64, chunk: &[usize]) -> Result<Batch> {
    let split = ds.split(cfg.split);
    let per = cfg.transform.output_len();
    // Each image is written once, into its place in the batch.
    let mut data = vec![0f32; per * chunk.len()];
    let decode = |((pos, &i), out): ((usize, &usize), &mut [f32])| -> Result<()> {
        let img = split
            .decode(i)
            .with_context(|| format!("{} sample {i} of {}", cfg.split, ds.name))?;
        let mut path = cfg.path.clone();
        path.extend([b, pos as u64]);
        let mut r = rng::substream(cfg.seed, "augment", &path);
        cfg.transform.apply_into(&img, cfg.mode, &mut r, out);
        Ok(())
    };
    // This producer thread is outside every pool, so `par_iter` queues on the global one.
    // The command runs on a worker of that pool and waits for this batch; when that is its
    // only worker (one core, or RAYON_NUM_THREADS=1), nothing would ever take the queued
    // work, so decode here instead. Each image has its own stream: the same batch either way.
    if rayon::current_num_threads() > 1 {
        chunk
            .par_iter()
            .enumerate()
            .zip(data.par_chunks_mut(per.max(1)))
            .try_for_each(decode)?;
    } else {
        chunk
            .iter()
            .enumerate()
            .zip(data.chunks_mut(per.max(1)))
            .try_for_each(decode)?;
    }
    Ok(Batch {
        data,
        labels: chunk.iter().map(|&i| split.labels[i]).collect(),
        indices: chunk.to_vec(),
    })
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel first unblocks a producer waiting to send.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::{generate, SyntheticSpec};
    use super::super::transforms::TransformKind;
    use super::*;

    fn ds() -> Arc<Dataset> {
        Arc::new(
            generate(&SyntheticSpec {
                classes: 3,
                train_per_class: 4,
                test_per_class: 1,
                size: 32,
                noise_std: 5.0,
                seed: 0,
            })
            .unwrap(),
        )
    }

    fn cfg(kind: TransformKind, drop_last: bool) -> LoaderConfig {
        LoaderConfig {
            split: SplitKind::Train,
            indices: vec![5, 0, 7, 3, 11, 2, 9],
            batch_size: 3,
            drop_last,
            transform: Transform { kind, resolution: 48 },
            mode: Mode::Train,
            seed: 1,
            path: vec![0, 4],
            prefetch: 1,
        }
    }

    #[test]
    fn batches_in_order_with_labels_and_shapes() {
        let d = ds();
        let batches: Vec<Batch> = BatchLoader::new(d.clone(), cfg(TransformKind::Cifar, false))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].indices, vec![9]);
        assert_eq!(batches[0].labels, vec![2, 0, 1]);
        assert_eq!(batches[0].data.len(), 3 * 3 * 48 * 48);
        let direct = super::super::transforms::cifar(&d.train.decode(0).unwrap(), 48);
        assert_eq!(&batches[0].data[3 * 48 * 48..2 * 3 * 48 * 48], &direct[..]);
        let dropped = BatchLoader::new(d, cfg(TransformKind::Cifar, true)).count();
        assert_eq!(dropped, 2);
    }

    #[test]
    fn augmentation_is_reproducible_and_early_drop_is_clean() {
        let d = ds();
        let a: Vec<Batch> = BatchLoader::new(d.clone(), cfg(TransformKind::Clip, false))
            .map(Result::unwrap)
            .collect();
        let b: Vec<Batch> = BatchLoader::new(d.clone(), cfg(TransformKind::Clip, false))
            .map(Result::unwrap)
            .collect();
        assert_eq!(a, b);
        let mut other = cfg(TransformKind::Clip, false);
        other.path = vec![1, 4];
        let c: Vec<Batch> = BatchLoader::new(d.clone(), other).map(Result::unwrap).collect();
        assert_ne!(a[0].data, c[0].data);
        // Dropping after one batch must not hang the producer.
        let mut it = BatchLoader::new(d, cfg(TransformKind::Clip, false));
        assert!(it.next().is_some());
        drop(it);
    }
}
