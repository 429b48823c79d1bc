//! `loadgen`: the load tool (see `testkit::load` and Docs/Benchmarks.md). Loopback only.
//!
//!     cargo build --release && cargo run --release -p udp-director-testkit --bin loadgen -- --help

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = testkit::load::LoadgenArgs::parse();
    match testkit::load::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
