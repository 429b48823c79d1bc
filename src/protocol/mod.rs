//! Wire formats, pure and allocation-conscious: the query JSON and the datagram codec.

pub mod datagram;
pub mod query;
