//! `fedpurel config`: the resolved configuration of a `fedpurel run` command line (the
//! same flags, presets and `--config` files) printed as TOML, with relative paths made
//! absolute. It is the file the server and the clients of a Flower run are built from
//! (`crate::bridge`, `integrations/flower/`), and a base for `fedpurel run --config`.

use anyhow::{Context, Result};

use super::run_args::{resolve, RunArgs};
use crate::bridge::absolute_paths;

/// Prints the configuration `args` resolve to.
pub fn run(args: RunArgs, matches: Option<&clap::ArgMatches>) -> Result<()> {
    let mut cfg = resolve(&args, matches)?;
    absolute_paths(&mut cfg)?;
    print!(
        "{}",
        toml::to_string_pretty(&cfg).context("cannot serialize the configuration")?
    );
    Ok(())
}
