//! One file per federated algorithm, each behind [`super::algorithm::Algorithm`].

pub mod fedgrab;
pub mod fedpurel;
pub mod promptfl;
pub mod promptfolio;
#[cfg(test)]
pub mod test_only;
pub mod zeroshot;
