//! Small reusable pieces with no knowledge of the product: a counter under a limit and its
//! guard ([`bounded`]), when a worker polls instead of sleeping ([`busy_poll`]), poison-tolerant locking ([`sync`]), and the allocator's tuning and
//! trim decision ([`memory`]).
//!
//! Owns nothing of the domain. Must not import anything of the crate.

pub mod bounded;
pub mod busy_poll;
pub mod logbudget;
pub mod memory;
pub mod sync;
