//! The vocabulary: the nouns and closed label sets that several layers share. A target, a
//! token's key and the rules it is issued under, a client's network, the token format, and
//! every reason and result a metric counts, each with its `ALL` and the maps between them
//! side by side ([`reasons`]).
//!
//! Owns the shared nouns. Must not import anything of the crate: every other module may
//! import this one, so a `crate::` path here would close a circle.

pub mod labels;
pub mod net;
pub mod reasons;
pub mod target;
pub mod token;

pub use net::{ClientNet, Grouping};
pub use reasons::{
    AllocationResult, AuthFailure, CloseReason, DropReason, ErrorCode, FastPathFailure,
    PingOutcome, ProofOutcome, Protocol, QueryClose, Refusal, Rejection, TcpClose, TcpRefusal,
};
pub use target::{Interner, KnownTargets, Network, Target, canonical};
pub use token::{
    ClientBinding, Fit, Grant, Policy, Spend, TokenFormat, TokenId, TokenKey, Use, session_id,
};
