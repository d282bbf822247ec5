//! The `fedpurel` command-line tool.

use clap::{CommandFactory, FromArgMatches};

/// mimalloc reuses freed pages instead of returning large blocks to the kernel, which
/// removes most page-fault time from the tensor-heavy loops (measured in docs/perf-notes.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (15 in `mimalloc.h`, v2): −1 keeps freed pages
/// mapped instead of returning them to the kernel, so the next tensor of the same size
/// does not pay for zeroed fresh pages (15 % of the text-encoder benchmark otherwise).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // SAFETY: sets a process-wide allocator option before any worker thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle asks for its thread count on every matmul and, without RAYON_NUM_THREADS,
    // recounts the CPUs each time (parsing /proc/cpuinfo: ~2 % of a small-model run).
    // Fixing the variable once keeps the same count and drops that cost.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    fedpurel::cli::init_tracing();
    let matches = fedpurel::cli::Cli::command().get_matches();
    let result = fedpurel::cli::Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| fedpurel::cli::run(cli, &matches));
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
