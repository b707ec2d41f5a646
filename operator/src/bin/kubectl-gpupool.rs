//! `kubectl gpupool`: a kubectl plugin (install this binary on the PATH) that asks the gpupool hub
//! why a job waits, where it runs, what the pool holds and what members earned.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = gpupool::cli::plugin::PluginArgs::parse();
    match gpupool::cli::plugin::run(args).await {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
