//! Wire formats, pure and allocation-conscious: the query JSON, the JSONPaths it carries
//! (compiled once), the datagram codec and PROXY v2 headers. Owns parsing and encoding only; must not know
//! how a query is resolved or what a session is.

pub mod admin_access;
pub mod datagram;
pub mod jsonpath;
pub mod operator_page;
pub mod proxy;
pub mod query;
pub mod tcp_line;
pub mod token_wire;
