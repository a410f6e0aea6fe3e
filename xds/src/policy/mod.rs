//! The xDS balancing policies (the tree gRFC A27 describes), registered by
//! [`crate::register`]: `xds_cluster_manager_experimental` (per-call routing
//! to one child per cluster), `xds_cluster_impl_experimental` (drops and
//! circuit breaking around the cluster's endpoint-picking policy),
//! `priority_experimental` (failover between priorities, A56) and
//! `weighted_target_experimental` (localities by weight).

mod children;
pub mod cluster_impl;
pub mod cluster_manager;
pub mod priority;
pub mod weighted_target;

/// Adds the xDS policies to the global policy registry.
pub(crate) fn register() {
    waypost_balancer::PolicyRegistry::global().register(cluster_impl::ClusterImplBuilder);
    waypost_balancer::PolicyRegistry::global().register(cluster_manager::ClusterManagerBuilder);
    waypost_balancer::PolicyRegistry::global().register(weighted_target::WeightedTargetBuilder);
    waypost_balancer::PolicyRegistry::global().register(priority::PriorityBuilder);
}
