//! The `waypost` command and, as its issue lands, the standalone look-aside
//! balancer (`waypost serve`, a `grpc.lb.v1.LoadBalancer/BalanceLoad`
//! server).
//!
//! Today the command resolves targets and registers endpoints in etcd:
//!
//! ```text
//! waypost resolve dns:///orders.internal:50051          # one JSON line, then exit
//! waypost resolve etcd:///orders --etcd 127.0.0.1:2379 --watch
//! waypost register --etcd 127.0.0.1:2379 --service orders --addr 10.0.0.7:50051
//! ```

pub mod cli;
