//! CIFAR-100 python-version files (`train`, `test`, `meta`): any bytes give a split, the
//! names, or an error — never a panic, a hang, or an allocation the input's size does not
//! justify.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fedpurel::data::cifar::parse_pickle_split(data, "train", 100, 20);
    let _ = fedpurel::data::cifar::parse_pickle_meta(data, "meta");
});
