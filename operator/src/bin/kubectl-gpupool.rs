//! `kubectl gpupool`: a kubectl plugin (install this binary on the PATH) with the pool commands
//! of `gpupool` — the same subcommands, flags and output formats. Install
//! `kubectl_complete-gpupool` beside it for completion of `kubectl gpupool <TAB>`.

use clap::{CommandFactory, Parser};
use gpupool::cli::Plugin;

#[tokio::main]
async fn main() {
    let args = Plugin::parse();
    gpupool::cli::main(args.global, args.command, Plugin::command()).await;
}
