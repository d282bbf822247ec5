//! CIFAR-100 binary-version files (`train.bin`, `fine_label_names.txt`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fedpurel::data::cifar::parse_binary_split(data, "train.bin", 100, 20);
    let _ = fedpurel::data::cifar::parse_names(data, "fine_label_names.txt");
});
