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
    // Parsed first: the thread settings below depend on the command.
    let matches = fedpurel::cli::Cli::command().get_matches();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // candle asks for its thread count on every matmul and, without RAYON_NUM_THREADS,
    // recounts the CPUs each time (parsing /proc/cpuinfo: ~2 % of a small-model run).
    // Fixing the variable once keeps the same count and drops that cost.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", cores.to_string()) };
    }
    // Cells running at once get candle's element-wise pool sized to one cell's share
    // (`elementwise_threads` says why); candle reads the variable when it first uses the pool.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        if let Some(n) = fedpurel::cli::elementwise_threads(&matches, cores) {
            // SAFETY: as above, still the only thread.
            unsafe { std::env::set_var("CANDLE_NUM_THREADS", n.to_string()) };
        }
    }
    // The command itself runs on a pool worker (below), so give the workers the main
    // thread's usual 8 MiB of stack rather than the 2 MiB default of spawned threads.
    if let Err(err) = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global() {
        eprintln!("error: cannot start the thread pool: {err}");
        std::process::exit(1);
    }
    fedpurel::cli::init_tracing();
    // The whole command runs on a worker of the thread pool: every parallel operation it
    // starts (candle's, gemm's, ours) then begins on a pool thread instead of being
    // injected from outside, which costs a futex wake-up per operation — 23 % of a
    // prompt-tuning round on the tiny CLIP (perf; docs/perf-notes.md).
    let result = fedpurel::cli::Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| rayon::scope(|_| fedpurel::cli::run(cli, &matches)));
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
