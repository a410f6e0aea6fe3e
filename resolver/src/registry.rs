//! The resolver plugin API: builders keyed by scheme, a global default
//! registry, and per-channel registries that take precedence over it.
//!
//! A resolver is anything that, given a [`Target`] and a [`Publisher`],
//! validates the target and starts publishing [`ResolverState`]s until
//! [`Publisher::closed`] resolves.
//!
//! ```
//! use waypost_resolver::{
//!     Endpoint, Publisher, ResolveError, ResolverBuilder, ResolverRegistry, ResolverState, Target,
//! };
//!
//! /// `fixed:` always resolves to one address.
//! struct Fixed;
//!
//! impl ResolverBuilder for Fixed {
//!     fn scheme(&self) -> &str {
//!         "fixed"
//!     }
//!     fn build(&self, _target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
//!         let addr: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
//!         publisher.update(ResolverState::from_endpoints([Endpoint::new(addr)]));
//!         Ok(()) // a dynamic resolver would spawn a task that owns `publisher`
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = ResolverRegistry::new();
//! registry.register(Fixed);
//! let mut resolution = registry.resolve("fixed:anything").unwrap();
//! let update = resolution.first().await;
//! assert_eq!(update.state.unwrap().endpoints.len(), 1);
//! # }
//! ```
//!
//! [`ResolverState`]: crate::ResolverState

use std::sync::{Arc, LazyLock};

use dashmap::DashMap;

use crate::ResolveError;
use crate::publish::{Publisher, Resolution};
use crate::target::Target;

/// Builds resolvers for one scheme.
pub trait ResolverBuilder: Send + Sync + 'static {
    /// The scheme this builder serves (`"dns"`, `"consul"`, …), lower case.
    fn scheme(&self) -> &str;

    /// Validates `target` and starts resolving it into `publisher`. Errors
    /// here are for targets this resolver can never serve; a lookup that
    /// fails should be published with [`Publisher::report_error`] and retried.
    /// Must be called inside a tokio runtime if it spawns tasks; those tasks
    /// must end once [`Publisher::closed`] resolves.
    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError>;
}

/// Resolver builders by scheme. [`ResolverRegistry::new`] makes a local
/// registry that falls back to the [global](ResolverRegistry::global) one;
/// clones share their builders.
#[derive(Clone, Default)]
pub struct ResolverRegistry {
    builders: Arc<DashMap<String, Arc<dyn ResolverBuilder>>>,
    is_global: bool,
}

impl std::fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut schemes: Vec<String> = self.builders.iter().map(|e| e.key().clone()).collect();
        schemes.sort();
        f.debug_struct("ResolverRegistry")
            .field("schemes", &schemes)
            .field("is_global", &self.is_global)
            .finish()
    }
}

/// Schemes waypost provides in other crates, registered by a call (Rust
/// has no import-time registration, and waypost uses no linker-section
/// constructors); a target with one of them is never taken for a DNS name.
const OPT_IN_SCHEMES: &[(&str, &str)] = &[(
    "xds",
    "build waypost-balancer with its `xds` feature (the `waypost` crate has it on by default) and the first channel registers it",
)];

static GLOBAL: LazyLock<ResolverRegistry> = LazyLock::new(|| {
    let registry = ResolverRegistry {
        builders: Arc::default(),
        is_global: true,
    };
    crate::builtin::register_builtins(&registry);
    registry
});

impl ResolverRegistry {
    /// An empty local registry; lookups fall back to the global one.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide default registry, holding the built-in resolvers
    /// (`passthrough`, `unix`, `unix-abstract`, `ipv4`, `ipv6`, and with
    /// their features `dns` and `etcd`).
    pub fn global() -> &'static ResolverRegistry {
        &GLOBAL
    }

    /// Adds (or replaces) the builder for its scheme.
    pub fn register(&self, builder: impl ResolverBuilder) {
        self.register_arc(Arc::new(builder));
    }

    /// Adds (or replaces) a shared builder.
    pub fn register_arc(&self, builder: Arc<dyn ResolverBuilder>) {
        self.builders
            .insert(builder.scheme().to_ascii_lowercase(), builder);
    }

    /// The builder for `scheme`: this registry's, else the global one's.
    pub fn get(&self, scheme: &str) -> Option<Arc<dyn ResolverBuilder>> {
        let scheme = scheme.to_ascii_lowercase();
        if let Some(builder) = self.builders.get(&scheme) {
            return Some(builder.value().clone());
        }
        if self.is_global {
            None
        } else {
            GLOBAL.get(&scheme)
        }
    }

    /// Parses `target`, picks its resolver (falling back to `dns:///target`
    /// when the scheme is not registered, as grpc-go does — except for the
    /// schemes waypost registers on request, such as `xds`, which fail
    /// saying how to register them) and starts it.
    pub fn resolve(&self, target: &str) -> Result<Resolution, ResolveError> {
        let parsed = Target::parse(target)?;
        let (target, builder) = match self.get(parsed.scheme()) {
            Some(builder) => (parsed, builder),
            None => {
                if let Some((scheme, how)) = OPT_IN_SCHEMES
                    .iter()
                    .find(|(scheme, _)| parsed.scheme().eq_ignore_ascii_case(scheme))
                {
                    return Err(ResolveError::NotRegistered {
                        scheme: (*scheme).to_owned(),
                        how,
                    });
                }
                let fallback = Target::dns_fallback(target);
                let builder = self.get("dns").ok_or_else(|| ResolveError::NoResolver {
                    scheme: parsed.scheme().to_owned(),
                })?;
                (fallback, builder)
            }
        };
        self.build(&target, builder.as_ref())
    }

    fn build(
        &self,
        target: &Target,
        builder: &dyn ResolverBuilder,
    ) -> Result<Resolution, ResolveError> {
        let (publisher, resolution) = Resolution::channel();
        builder.build(target, publisher)?;
        Ok(resolution)
    }
}
