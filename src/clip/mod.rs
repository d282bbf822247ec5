//! CLIP: configuration, checkpoints, tokenizer, preprocessing, encoders, zero-shot head.
