//! A `grpc.health.v1.Health` server whose statuses are set from code.
//!
//! [`HealthReporter::new`] returns the reporter and a tonic service to add to
//! a server. `Check` answers the current status (NOT_FOUND for a service that
//! was never set); `Watch` streams the current status and then every change,
//! and answers `SERVICE_UNKNOWN` for a service that is not (yet) known.
//!
//! ```
//! use waypost_proto::health::HealthReporter;
//! use waypost_proto::grpc::health::v1::health_check_response::ServingStatus;
//!
//! let (reporter, service) = HealthReporter::new();
//! reporter.set("movies.v1.MoviesService", ServingStatus::NotServing);
//! assert_eq!(reporter.get("movies.v1.MoviesService"), Some(ServingStatus::NotServing));
//! // The whole server ("") starts SERVING.
//! assert_eq!(reporter.get(""), Some(ServingStatus::Serving));
//! # drop(service);
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};

use crate::grpc::health::v1::health_check_response::ServingStatus;
use crate::grpc::health::v1::health_server::{Health, HealthServer};
use crate::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

/// Sets the statuses that a [`HealthService`] reports. Cheap to clone; all
/// clones share the same statuses.
#[derive(Clone, Debug, Default)]
pub struct HealthReporter {
    statuses: Arc<Mutex<HashMap<String, watch::Sender<ServingStatus>>>>,
}

impl HealthReporter {
    /// A reporter with the whole server (`""`) SERVING, and the tonic service
    /// that answers from it.
    pub fn new() -> (HealthReporter, HealthServer<HealthService>) {
        let reporter = HealthReporter::default();
        reporter.set("", ServingStatus::Serving);
        let service = HealthService {
            reporter: reporter.clone(),
        };
        (reporter, HealthServer::new(service))
    }

    /// Sets the status of `service` (`""` is the whole server); watchers see
    /// the change at once.
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.sender(service).send_replace(status);
    }

    /// The status of `service`, or `None` if it was never set.
    pub fn get(&self, service: &str) -> Option<ServingStatus> {
        let statuses = self.statuses.lock();
        let status = *statuses.get(service)?.borrow();
        (status != ServingStatus::ServiceUnknown).then_some(status)
    }

    fn sender(&self, service: &str) -> watch::Sender<ServingStatus> {
        self.statuses
            .lock()
            .entry(service.to_owned())
            .or_insert_with(|| watch::Sender::new(ServingStatus::ServiceUnknown))
            .clone()
    }
}

/// The `grpc.health.v1.Health` implementation behind [`HealthReporter::new`].
#[derive(Debug, Clone)]
pub struct HealthService {
    reporter: HealthReporter,
}

impl HealthService {
    /// A service answering from `reporter`, for servers that build their
    /// `HealthServer` themselves.
    pub fn from_reporter(reporter: HealthReporter) -> Self {
        HealthService { reporter }
    }
}

/// The stream type of `Watch`.
pub type WatchResponseStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.reporter.get(service) {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status.into(),
            })),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let receiver = self.reporter.sender(&request.get_ref().service).subscribe();
        let stream = WatchStream::new(receiver).map(|status| {
            Ok(HealthCheckResponse {
                status: status.into(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
