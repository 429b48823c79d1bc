//! udp-director: a Kubernetes-native UDP session director for game servers.
//!
//! A client asks the TCP query server for a server matching a query and gets a short-lived
//! token; its first UDP datagram to the data port carries the token and from then on its
//! datagrams are proxied both ways. See `Docs/Architecture.md` for the floors and the three
//! journeys.
//!
//! Data flows one way: socket (`shell`) → decision (`session`, over `token`, `resolve` and
//! `protocol`, with time passed in) → one output queue → action (`shell`) → socket. `app`
//! wires the pieces; `main.rs` is the only place for `anyhow`. `tests/layers.rs` holds every
//! import to the floors.
//!
//! Owns the crate's public surface: what tests, benches, the fuzz targets and the binary may
//! use. Must not hold logic of its own.

// No panics on paths a client, a config or the API server can reach: errors or counted drops.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// What only the crate uses is `pub(crate)`; `pub` is the surface tests, benches, the fuzz
// targets and the binary use.
#![warn(unreachable_pub)]

pub mod app;
pub mod config;
// Test oracles: the property tests and the fuzz targets use them; the director never does.
#[cfg(any(test, feature = "sim"))]
pub mod invariants;
pub mod k8s;
pub(crate) mod metrics;
pub mod model;
pub mod protocol;
pub mod resolve;
pub mod session;
pub(crate) mod settings;
pub mod shell;
pub mod token;
pub mod util;
