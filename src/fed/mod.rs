//! Federated training: the optimizer clients use, and (in later steps) the round loop and
//! one file per algorithm behind one trait.

pub mod local;
pub mod replay;
pub mod sgd;
pub mod train;
