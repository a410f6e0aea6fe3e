//! The xDS balancing policies (the tree gRFC A27 describes), registered by
//! [`crate::register`]. So far: `xds_cluster_impl_experimental` (drops and
//! circuit breaking around the cluster's endpoint-picking policy).

pub mod cluster_impl;

/// Adds the xDS policies to the global policy registry.
pub(crate) fn register() {
    waypost_balancer::PolicyRegistry::global().register(cluster_impl::ClusterImplBuilder);
}
