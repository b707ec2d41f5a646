//! `kubectl_complete-gpupool`: completion of `kubectl gpupool` arguments. kubectl (1.26+) runs
//! it, when it is on the PATH beside `kubectl-gpupool`, with the words typed after `gpupool`
//! (the last one being completed) and shows what it prints: subcommands, flags, output formats,
//! and member, job, namespace and context names looked up on the hub and in the kubeconfig.

use clap::CommandFactory;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    gpupool::cli::complete::run(gpupool::cli::Plugin::command(), &args).await;
}
