//! The xDS resource types, each decoded and checked as gRPC does, and
//! reduced to what the client uses.

pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;
