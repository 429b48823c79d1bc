//! `nsbench`: direct, a hand-tuned forwarder and udp-director with and without the kernel
//! fast path, through network namespaces (see `testkit::nsbench`, bench/fastpath/run.sh and
//! Docs/Benchmarks.md). Needs root; traffic stays in the namespaces it makes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = testkit::nsbench::NsbenchArgs::parse();
    match testkit::nsbench::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsbench: {e}");
            ExitCode::FAILURE
        }
    }
}
