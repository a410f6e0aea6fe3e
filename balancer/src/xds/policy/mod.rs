//! The xDS balancing policies (the tree gRFC A27 describes), registered by
//! [`crate::xds::register`]: `xds_cluster_manager_experimental` (per-call routing
//! to one child per cluster), `xds_cluster_impl_experimental` (drops and
//! circuit breaking around the cluster's endpoint-picking policy),
//! `priority_experimental` (failover between priorities, A56) and
//! `weighted_target_experimental` (localities by weight).

mod children;
pub mod cluster_impl;
pub mod cluster_manager;
pub mod priority;
pub mod route_table;
pub mod weighted_target;

/// Adds the xDS policies to `registry` (the global one has them from
/// the start).
pub(crate) fn register_into(registry: &crate::PolicyRegistry) {
    registry.register(cluster_impl::ClusterImplBuilder);
    registry.register(cluster_manager::ClusterManagerBuilder);
    registry.register(weighted_target::WeightedTargetBuilder);
    registry.register(priority::PriorityBuilder);
}
