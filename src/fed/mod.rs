//! Federated training: the optimizer clients use, local steps, the round loop, one file
//! per algorithm behind one trait (the algorithm seam, [`algorithm::Algorithm`]) with its
//! [`registry`] entries, and
//! one client's share of a round for orchestrators that run clients apart ([`client`]).

pub mod algorithm;
pub mod algorithms;
mod at_once;
pub mod client;
pub mod federation;
pub mod local;
mod overlap;
mod private_logits;
pub mod record;
pub mod registry;
pub mod replay;
pub mod sgd;
mod stems;
pub mod train;
