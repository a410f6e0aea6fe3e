//! The standalone look-aside balancer (`waypost serve`, a
//! `grpc.lb.v1.LoadBalancer/BalanceLoad` server that grpc-go, grpc C-core,
//! grpc-java and waypost clients can use) and the `waypost` command.
//!
//! ```text
//! waypost serve                                           # the embedded default registry
//! waypost serve --config lb.toml
//! waypost serve --listen 127.0.0.1:50050 --service movies=127.0.0.1:50061,127.0.0.1:50062
//! waypost resolve dns:///orders.internal:50051            # one JSON line, then exit
//! waypost register --etcd 127.0.0.1:2379 --service orders --addr 10.0.0.7:50051
//! ```
//!
//! The pieces: [`config`] (TOML, flags, embedded default), [`registry`]
//! (backends, health, drains, the published lists), [`source`] (static lists
//! or any resolver target), [`probe`] (health probes reusing the balancer
//! crate's channel), [`assign`] (the pure list computation), [`rates`] (the clients'
//! reported call rate, robust to a lying client), [`balance`]
//! (the BalanceLoad service), [`port`] (the balancer port's HTTP/2
//! server: BalanceLoad served from each connection's task, ADS through
//! tonic), [`listener`] (connection limits and
//! timeouts for both ports), [`admin`] (the admin port: status page, JSON
//! status, drain), [`metrics`] (OpenMetrics over prometheus-client) and
//! [`server`] (wiring and shutdown).

pub mod admin;
pub mod assign;
pub mod balance;
pub mod cli;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod port;
pub mod probe;
pub mod rates;
pub mod registry;
pub mod server;
pub mod source;
pub mod xds;
