//! Client-side health checking: `grpc.health.v1.Health/Watch` on a
//! subchannel's own connection.
//!
//! The subchannel stays connected whatever the answer; only whether it is
//! offered to pickers changes. The first answer is awaited in CONNECTING;
//! SERVING makes it READY; any other status makes it TRANSIENT_FAILURE. A
//! Watch that ends with UNIMPLEMENTED means the backend has no health
//! service: it counts as healthy and is not asked again. Any other failure
//! is retried with backoff.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use waypost_proto::grpc::health::v1::HealthCheckRequest;
use waypost_proto::grpc::health::v1::health_check_response::ServingStatus;
use waypost_proto::grpc::health::v1::health_client::HealthClient;
use waypost_resolver::backoff::{Backoff, BackoffConfig, seeded_rng};

use crate::subchannel::Connection;
use crate::transport::{Failure, SendError, status_of};

/// What the health watch says about the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// SERVING.
    Serving,
    /// Anything else, with the status's name.
    NotServing(String),
}

/// A tower service that sends requests on one subchannel connection, for
/// the health client.
#[derive(Clone)]
pub(crate) struct ConnectionService {
    connection: Connection,
    authority: http::uri::Authority,
}

impl ConnectionService {
    pub(crate) fn new(connection: Connection, authority: http::uri::Authority) -> Self {
        ConnectionService {
            connection,
            authority,
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for ConnectionService {
    type Response = http::Response<crate::ChannelBody>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        let sent = self.connection.send(request);
        Box::pin(async move {
            let mut exchange = match sent {
                Ok(exchange) => exchange,
                Err(SendError::Unsent(_)) => {
                    return Err(tonic::Status::unavailable("the connection is closing").into());
                }
                Err(SendError::Failed(status)) => return Err(status.into()),
            };
            match std::future::poll_fn(|cx| exchange.poll_response(cx)).await {
                Ok(response) => Ok(
                    response.map(|body| crate::ChannelBody::new(body, None, Default::default()))
                ),
                Err(Failure::Unsent(_)) => {
                    Err(tonic::Status::unavailable("the connection closed").into())
                }
                Err(Failure::Failed(e)) => Err(status_of(&e).into()),
            }
        })
    }
}

/// Watches `service` on `connection`, calling `report` on every change.
/// Returns only if the backend has no health service (UNIMPLEMENTED).
pub(crate) async fn watch(
    connection: Connection,
    authority: http::uri::Authority,
    service: String,
    backoff: BackoffConfig,
    mut report: impl FnMut(Health),
) {
    let mut backoff = Backoff::new(backoff, seeded_rng());
    loop {
        let mut client = HealthClient::new(ConnectionService::new(
            connection.clone(),
            authority.clone(),
        ));
        match client
            .watch(HealthCheckRequest {
                service: service.clone(),
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(answer)) => {
                            backoff.reset();
                            report(match answer.status() {
                                ServingStatus::Serving => Health::Serving,
                                other => Health::NotServing(other.as_str_name().to_owned()),
                            });
                        }
                        Ok(None) => break,
                        Err(status) if status.code() == tonic::Code::Unimplemented => return,
                        Err(status) => {
                            tracing::debug!(%status, "health watch failed; retrying");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => return,
            Err(status) => tracing::debug!(%status, "health watch failed; retrying"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
