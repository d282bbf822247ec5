//! ImageNet-LT / Places-LT list files and class-name files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fedpurel::data::listfile::parse_list(data, "ImageNet_LT_train.txt");
    let _ = fedpurel::data::listfile::parse_wnid_names(data, "classnames.txt");
    let _ = fedpurel::data::listfile::parse_label_names(data, "categories_places365.txt");
});
