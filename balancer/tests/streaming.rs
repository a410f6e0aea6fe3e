//! Client-streaming calls through a `Channel`: request bodies larger than
//! the HTTP/2 flow-control windows, bodies whose chunks come later, and a
//! server that answers before the request has ended.

mod support;

use std::time::Duration;

use support::*;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use waypost_proto::bulk::v1::bulk_client::BulkClient;
use waypost_proto::bulk::v1::bulk_server::{Bulk, BulkServer};
use waypost_proto::bulk::v1::{Chunk, OpenTransfer, StreamSummary, TransferResult, TransferTicket};

/// Counts uploaded bytes; an upload whose first chunk is empty is answered
/// at once, without reading the rest.
struct Counter;

#[tonic::async_trait]
impl Bulk for Counter {
    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<Chunk>>,
    ) -> Result<tonic::Response<StreamSummary>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await? {
            if chunk.data.is_empty() && bytes == 0 {
                return Ok(tonic::Response::new(StreamSummary { bytes: 0 }));
            }
            bytes += chunk.data.len() as u64;
        }
        Ok(tonic::Response::new(StreamSummary { bytes }))
    }

    async fn open(
        &self,
        _: tonic::Request<OpenTransfer>,
    ) -> Result<tonic::Response<TransferTicket>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }

    async fn result(
        &self,
        _: tonic::Request<TransferTicket>,
    ) -> Result<tonic::Response<TransferResult>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BulkServer::new(Counter))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn client(addr: std::net::SocketAddr) -> BulkClient<waypost_balancer::Channel> {
    BulkClient::new(builder(&format!("ipv4:{addr}")).build().unwrap())
}

#[tokio::test]
async fn a_request_stream_larger_than_the_windows_arrives_whole() {
    let mut client = client(serve().await);
    // 12 MiB in 64 KiB chunks: several times the 2 MiB stream window.
    let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = (0..192).map(move |_| Chunk {
        data: chunk.clone(),
    });
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        client.upload(tokio_stream::iter(chunks)),
    )
    .await
    .expect("the upload finished")
    .unwrap()
    .into_inner();
    assert_eq!(summary.bytes, 192 * 64 * 1024);
}

#[tokio::test]
async fn chunks_that_come_later_are_sent_as_they_come() {
    let mut client = client(serve().await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let producer = tokio::spawn(async move {
        for i in 0..50u8 {
            tx.send(Chunk {
                data: vec![i; 1000].into(),
            })
            .await
            .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        client.upload(ReceiverStream::new(rx)),
    )
    .await
    .expect("the upload finished")
    .unwrap()
    .into_inner();
    producer.await.unwrap();
    assert_eq!(summary.bytes, 50_000);
}

#[tokio::test]
async fn a_server_that_answers_before_the_request_ends_does_not_hang_the_call() {
    let mut client = client(serve().await);
    // An empty first chunk makes the server answer at once; the rest of the
    // request (endless) is never read.
    let endless = tokio_stream::iter(std::iter::once(Chunk {
        data: bytes::Bytes::new(),
    }))
    .chain(tokio_stream::iter(std::iter::repeat_with(|| Chunk {
        data: vec![1; 1024].into(),
    })))
    .throttle(Duration::from_millis(1));
    let summary = tokio::time::timeout(Duration::from_secs(10), client.upload(endless))
        .await
        .expect("the call ended")
        .unwrap()
        .into_inner();
    assert_eq!(summary.bytes, 0);
    // The channel still works.
    let summary = client
        .upload(tokio_stream::iter([Chunk {
            data: vec![2; 10].into(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.bytes, 10);
}

#[tokio::test]
async fn a_streamed_request_message_over_the_limit_fails_the_call() {
    let addr = serve().await;
    let channel = builder(&format!("ipv4:{addr}"))
        .default_service_config(serde_json::json!({
            "methodConfig": [{
                "name": [{"service": "bulk.v1.Bulk", "method": "Upload"}],
                "maxRequestMessageBytes": 1024
            }]
        }))
        .build()
        .unwrap();
    let mut client = BulkClient::new(channel);
    // Chunks that come one by one, after the call is sent: the fourth is
    // over the limit (a Chunk is its data plus 3 bytes of tag and length).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let producer = tokio::spawn(async move {
        for size in [100, 1021, 10, 1022, 10] {
            if tx
                .send(Chunk {
                    data: vec![3; size].into(),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.upload(ReceiverStream::new(rx)),
    )
    .await
    .expect("the call ended")
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("maxRequestMessageBytes (1025 > 1024)"),
        "{status:?}"
    );
    producer.await.unwrap();

    // Within the limit, on the same channel.
    let summary = client
        .upload(tokio_stream::iter([Chunk {
            data: vec![4; 1021].into(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.bytes, 1021);
}
