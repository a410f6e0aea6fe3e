//! Out-of-band load reports: `xds.service.orca.v3.OpenRcaService/
//! StreamCoreMetrics` on an endpoint's own connection (gRFC A51), feeding
//! its weight. The stream is reopened with backoff when it fails, and
//! given up if the backend does not serve it (UNIMPLEMENTED).

use std::sync::Arc;
use std::time::Duration;

use waypost_proto::xds::service::orca::v3::OrcaLoadReportRequest;
use waypost_proto::xds::service::orca::v3::open_rca_service_client::OpenRcaServiceClient;
use waypost_resolver::backoff::{Backoff, BackoffConfig, seeded_rng};

use super::OobReports;
use super::weight::EndpointWeight;
use tokio_util::task::AbortOnDropHandle;

use crate::health::ConnectionService;
use crate::subchannel::Connection;

/// Opens real streams, each in a task that ends when its guard drops.
pub(crate) struct Streams;

impl OobReports for Streams {
    fn watch(
        &self,
        connection: Connection,
        authority: &str,
        period: Duration,
        weight: Arc<EndpointWeight>,
    ) -> Box<dyn Send> {
        let authority = match authority.parse::<http::uri::Authority>() {
            Ok(authority) => authority,
            Err(error) => {
                tracing::warn!(%authority, %error, "no out-of-band load reports: bad authority");
                return Box::new(());
            }
        };
        Box::new(AbortOnDropHandle::new(tokio::spawn(stream_reports(
            connection, authority, period, weight,
        ))))
    }
}

async fn stream_reports(
    connection: Connection,
    authority: http::uri::Authority,
    period: Duration,
    weight: Arc<EndpointWeight>,
) {
    let mut backoff = Backoff::new(BackoffConfig::default(), seeded_rng());
    loop {
        let mut client = OpenRcaServiceClient::new(ConnectionService::new(
            connection.clone(),
            authority.clone(),
        ));
        let request = OrcaLoadReportRequest {
            report_interval: prost_types::Duration::try_from(period).ok(),
            request_cost_names: Vec::new(),
        };
        let failure = match client.stream_core_metrics(request).await {
            Ok(response) => {
                let mut reports = response.into_inner();
                loop {
                    match reports.message().await {
                        Ok(Some(report)) => {
                            backoff.reset();
                            weight.report(&report);
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        if let Some(status) = failure {
            if status.code() == tonic::Code::Unimplemented {
                tracing::warn!(
                    address = %connection.address(),
                    "the backend does not serve ORCA out-of-band reports; its weight stays unknown"
                );
                return;
            }
            tracing::debug!(%status, "ORCA out-of-band stream failed; reopening");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
