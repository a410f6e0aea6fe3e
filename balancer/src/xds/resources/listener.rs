//! LDS: the `Listener` resource a gRPC client asks for (its API listener,
//! gRFC A27, A39), checked and reduced to where its routes come from.
//!
//! Accepted: an `api_listener` holding an `HttpConnectionManager` whose
//! routes are inline (`route_config`) or come from RDS over `ads` or
//! `self`, whose `http_filters` are not empty and end with the router;
//! other filters are refused unless `is_optional` (gRPC's fault injection
//! and RBAC filters are not supported yet). The connection manager's
//! `max_stream_duration` is kept.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::route::{self, RouteConfigUpdate};
use crate::xds::client::ads::{ResourceError, ResourceType, Value};

/// The type URL of LDS resources.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// The API listener's payload.
pub const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The router filter, which must come last.
pub const ROUTER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// LDS for the XdsClient.
pub static LDS: ResourceType = ResourceType {
    type_url: TYPE_URL,
    full_state: true,
    decode: decode_value,
};

/// Where a listener's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// The RDS resource of this name.
    Rds(String),
    /// Inline.
    Inline(Arc<RouteConfigUpdate>),
}

/// A checked listener.
#[derive(Debug, Clone)]
pub struct ListenerUpdate {
    /// Its name (the target's, for `xds:///name`).
    pub name: String,
    /// Its routes.
    pub routes: RouteSource,
    /// The longest a call may take unless its route says otherwise.
    pub max_stream_duration: Option<Duration>,
}

fn refuse(name: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        name: Some(name.to_owned()),
        message: message.into(),
    }
}

/// Decodes and checks one `Listener`.
pub fn decode(any: &Any) -> Result<ListenerUpdate, ResourceError> {
    let listener = Listener::decode(any.value.as_slice()).map_err(|e| ResourceError {
        name: None,
        message: format!("can't decode Listener: {e}"),
    })?;
    let name = listener.name.clone();
    if name.is_empty() {
        return Err(ResourceError {
            name: None,
            message: "field:name error:empty".into(),
        });
    }
    let payload = listener
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| {
            refuse(
                &name,
                "field:api_listener error:field not present (gRPC clients need an API listener)",
            )
        })?;
    if payload.type_url != HCM_TYPE_URL {
        return Err(refuse(
            &name,
            format!(
                "field:api_listener.api_listener error:type {} is not HttpConnectionManager",
                payload.type_url
            ),
        ));
    }
    let hcm = HttpConnectionManager::decode(payload.value.as_slice()).map_err(|e| {
        refuse(
            &name,
            format!("field:api_listener.api_listener error:can't decode: {e}"),
        )
    })?;
    let at = "field:api_listener.api_listener";
    if hcm.http_filters.is_empty() {
        return Err(refuse(
            &name,
            format!("{at}.http_filters error:expected at least one HTTP filter"),
        ));
    }
    let last = hcm.http_filters.len() - 1;
    for (i, filter) in hcm.http_filters.iter().enumerate() {
        let kind = match &filter.config_type {
            Some(ConfigType::TypedConfig(config)) => config.type_url.as_str(),
            _ => "",
        };
        let is_router = kind == ROUTER_TYPE_URL;
        if i == last && !is_router {
            return Err(refuse(
                &name,
                format!("{at}.http_filters[{i}] error:the last filter must be the router"),
            ));
        }
        if i != last && is_router {
            return Err(refuse(
                &name,
                format!("{at}.http_filters[{i}] error:the router must be the last filter"),
            ));
        }
        if !is_router && !filter.is_optional {
            return Err(refuse(
                &name,
                format!(
                    "{at}.http_filters[{i}] error:filter {:?} ({kind}) is not supported",
                    filter.name
                ),
            ));
        }
    }
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            match rds
                .config_source
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref())
            {
                Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => {}
                _ => {
                    return Err(refuse(
                        &name,
                        format!("{at}.rds.config_source error:ConfigSource is not ads or self"),
                    ));
                }
            }
            if rds.route_config_name.is_empty() {
                return Err(refuse(
                    &name,
                    format!("{at}.rds.route_config_name error:empty"),
                ));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(config)) => {
            let update = route::from_proto(config)
                .map_err(|e| refuse(&name, format!("{at}.route_config: {}", e.message)))?;
            RouteSource::Inline(Arc::new(update))
        }
        _ => {
            return Err(refuse(
                &name,
                format!(
                    "{at} error:neither rds nor route_config (scoped routes are not supported)"
                ),
            ));
        }
    };
    let max_stream_duration = hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_stream_duration.as_ref())
        .and_then(|d| {
            Some(Duration::new(
                u64::try_from(d.seconds).ok()?,
                u32::try_from(d.nanos).ok()?,
            ))
        });
    Ok(ListenerUpdate {
        name,
        routes,
        max_stream_duration,
    })
}

fn decode_value(any: &Any) -> Result<(String, Value), ResourceError> {
    let update = decode(any)?;
    Ok((update.name.clone(), Arc::new(update)))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource};
    use envoy_types::pb::envoy::config::listener::v3::ApiListener;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, Rds,
    };

    use super::*;

    fn filter(name: &str, type_url: &str, optional: bool) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            is_optional: optional,
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: type_url.into(),
                value: Vec::new(),
            })),
            ..Default::default()
        }
    }

    fn listener(filters: Vec<HttpFilter>) -> Any {
        let hcm = HttpConnectionManager {
            http_filters: filters,
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                route_config_name: "orders-routes".into(),
            })),
            ..Default::default()
        };
        let listener = Listener {
            name: "orders".into(),
            api_listener: Some(ApiListener {
                api_listener: Some(Any {
                    type_url: HCM_TYPE_URL.into(),
                    value: hcm.encode_to_vec(),
                }),
            }),
            ..Default::default()
        };
        Any {
            type_url: TYPE_URL.into(),
            value: listener.encode_to_vec(),
        }
    }

    #[test]
    fn an_api_listener_with_rds_and_the_router_last() {
        let update = decode(&listener(vec![
            filter("optional-thing", "type.googleapis.com/some.Filter", true),
            filter("router", ROUTER_TYPE_URL, false),
        ]))
        .unwrap();
        assert!(matches!(update.routes, RouteSource::Rds(name) if name == "orders-routes"));
    }

    #[test]
    fn filter_chains_grpc_refuses_are_refused() {
        for (filters, expected) in [
            (vec![], "expected at least one HTTP filter"),
            (
                vec![filter(
                    "fault",
                    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    false,
                )],
                "last filter must be the router",
            ),
            (
                vec![
                    filter("router", ROUTER_TYPE_URL, false),
                    filter("router2", ROUTER_TYPE_URL, false),
                ],
                "router must be the last",
            ),
            (
                vec![
                    filter(
                        "rbac",
                        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                        false,
                    ),
                    filter("router", ROUTER_TYPE_URL, false),
                ],
                "is not supported",
            ),
        ] {
            let error = decode(&listener(filters)).unwrap_err();
            assert_eq!(error.name.as_deref(), Some("orders"));
            assert!(error.message.contains(expected), "{}", error.message);
        }
    }
}
