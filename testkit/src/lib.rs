//! The harness shared by udp-director's tests, benchmarks, examples and load tool.
//!
//! Everything here drives the director from outside, over its wire protocols (TCP query
//! lines, UDP datagrams, admin HTTP) or as a child process, so it does not depend on the
//! daemon's crate and the daemon's crate ships none of it.
//!
//! | module | what |
//! | --- | --- |
//! | [`child`] | the director binary as a child process (start-up line, logs, RSS, fds), temp dirs |
//! | [`scrape`] | the one `/metrics` parser: series values and sums |
//! | [`client`] | a blocking query client and a plain HTTP GET |
//! | [`cpu`] | machine-wide busy CPU time (`/proc/stat`) |
//! | [`echo`] | a UDP echo server standing in for a game server |
//! | [`exe`] | the director binary for tests in other crates (client, C ABI, C#, Node) |
//! | [`yaml`] | config builders for loopback directors |
//! | [`wait`] | deadline-bounded polling and pacing (the only sleeps) |
//! | [`rng`] | a seeded xorshift64* generator, so failures replay |
//! | [`load`] | the load tool behind `loadgen` |
//! | [`netns`] | client, router, pod and target network namespaces joined by veths |
//! | [`nsbench`] | the namespace benchmark behind `nsbench` (direct, forwarder, director, fast path) |
//!
//! All traffic goes to loopback or to network namespaces the harness made itself; every
//! loop is bounded in count and time.

pub mod child;
pub mod client;
pub mod cpu;
pub mod echo;
pub mod exe;
pub mod forge;
pub mod load;
pub mod netns;
pub mod nsbench;
pub mod rng;
pub mod scrape;
pub mod wait;
pub mod yaml;

pub use child::{ChildDirector, TempDir};
pub use client::{Answer, http_get, query_raw, query_token};
pub use echo::EchoServer;
pub use exe::director_exe;
pub use rng::Rng;
pub use scrape::Scrape;
pub use wait::{Pacer, eventually};
