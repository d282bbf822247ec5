//! The `fedpurel` command-line tool.

use clap::Parser;

fn main() {
    fedpurel::cli::init_tracing();
    let cli = fedpurel::cli::Cli::parse();
    if let Err(err) = fedpurel::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
