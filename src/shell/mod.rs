//! The shell wing: every socket, thread, task and watch of the director. It decides nothing:
//! it turns bytes and events into inputs for the core (`session`, `resolve`, `token`) and
//! carries out what the core says.
//!
//! Owns I/O. Must not make a decision a pure module could make and test without sockets.

pub(crate) mod admin;
pub mod fast_path;
pub(crate) mod housekeeping;
pub(crate) mod keys;
pub(crate) mod listen;
pub(crate) mod process;
pub(crate) mod query;
pub mod reload;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod udp;
