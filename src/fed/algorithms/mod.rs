//! One file per federated algorithm, each behind [`super::algorithm::Algorithm`] with its
//! registry entries (`ENTRIES`). Adding an algorithm: write its file and name it in the
//! one list below, which declares the module and registers its entries
//! ([`super::registry`] reads [`ALGORITHMS`]).

use super::algorithm::Entry;

/// Declares each algorithm module and lists its `ENTRIES`, in order.
macro_rules! algorithms {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $($(#[$attr])* pub mod $name;)*

        /// Every algorithm file's entries, in registry order.
        pub const ALGORITHMS: &[&[Entry]] = &[$($(#[$attr])* $name::ENTRIES,)*];
    };
}

algorithms! {
    zeroshot,
    fedpurel,
    promptfl,
    promptfolio,
    fedgrab,
    #[cfg(test)]
    test_only,
}
