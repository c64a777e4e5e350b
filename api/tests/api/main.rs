//! Tests of the API through its router (`tower::ServiceExt::oneshot`) over a
//! real store in a temporary directory, and of the server over real
//! loopback and Unix sockets. One binary, so the crate links once.

mod changes;
mod common;
mod metrics;
mod routes;
mod serve;
