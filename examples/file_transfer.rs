//! Bulk data on `waypost::rpc`: a control call opens a transfer, a data
//! connection streams the file, and the checksum is verified at the end —
//! once by the connection itself (CRC-32 in the body's END frame, agreed in
//! the handshake) and once end to end (SHA-256 of the file as written).
//!
//! ```text
//! cargo run --example file_transfer
//! ```
//!
//! One port serves both: `bulk.v1.Bulk` over gRPC (label `control`) and
//! the upload over a framed data connection (label `data`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use waypost::proto::bulk::v1::bulk_client::BulkClient;
use waypost::proto::bulk::v1::bulk_server::{Bulk, BulkServer};
use waypost::proto::bulk::v1::{
    Chunk, OpenTransfer, StreamSummary, TransferResult, TransferTicket,
};
use waypost::rpc::{Client, DataRequest, DataResponse, Listener, Server};

/// Size of the demo file.
pub const FILE_SIZE: usize = 48 << 20;

/// Transfers the server knows about, by ticket.
#[derive(Debug, Default)]
struct Transfers {
    open: Mutex<HashMap<String, OpenTransfer>>,
    done: Mutex<HashMap<String, TransferResult>>,
    next: AtomicU64,
}

/// The control service: opens transfers and reports their results.
#[derive(Debug, Clone)]
struct Control(Arc<Transfers>);

#[tonic::async_trait]
impl Bulk for Control {
    async fn upload(
        &self,
        _: tonic::Request<tonic::Streaming<Chunk>>,
    ) -> Result<tonic::Response<StreamSummary>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "bytes go over the data connection, not gRPC",
        ))
    }

    async fn open(
        &self,
        request: tonic::Request<OpenTransfer>,
    ) -> Result<tonic::Response<TransferTicket>, tonic::Status> {
        let open = request.into_inner();
        if open.name.is_empty() || open.name.contains('/') || open.name.starts_with('.') {
            return Err(tonic::Status::invalid_argument("a plain file name, please"));
        }
        let ticket = format!("t-{}", self.0.next.fetch_add(1, Ordering::SeqCst));
        self.0.open.lock().insert(ticket.clone(), open);
        Ok(tonic::Response::new(TransferTicket { ticket }))
    }

    async fn result(
        &self,
        request: tonic::Request<TransferTicket>,
    ) -> Result<tonic::Response<TransferResult>, tonic::Status> {
        let ticket = request.into_inner().ticket;
        self.0
            .done
            .lock()
            .get(&ticket)
            .cloned()
            .map(tonic::Response::new)
            .ok_or_else(|| tonic::Status::not_found(format!("no finished transfer {ticket}")))
    }
}

/// The data handler: writes the body to `dir/<name>` while hashing it.
async fn receive(
    transfers: Arc<Transfers>,
    dir: PathBuf,
    mut request: DataRequest,
) -> Result<DataResponse, tonic::Status> {
    let ticket = String::from_utf8_lossy(&request.message).into_owned();
    let open = transfers
        .open
        .lock()
        .remove(&ticket)
        .ok_or_else(|| tonic::Status::permission_denied(format!("unknown ticket {ticket}")))?;
    let path = dir.join(&open.name);
    let mut file = tokio::fs::File::create(&path).await?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = request.body.chunk().await {
        // A transport error (or a CRC-32 mismatch) ends the transfer here.
        let chunk = chunk?;
        hash.update(&chunk);
        file.write_all(&chunk).await?;
        bytes += chunk.len() as u64;
    }
    file.flush().await?;
    if bytes != open.size {
        return Err(tonic::Status::data_loss(format!(
            "announced {} bytes, received {bytes}",
            open.size
        )));
    }
    let result = TransferResult {
        name: open.name,
        bytes,
        sha256: format!("{:x}", hash.finalize()),
    };
    transfers.done.lock().insert(ticket, result.clone());
    Ok(DataResponse::new(result.sha256))
}

/// What the example observed (the test checks it).
#[derive(Debug, Default)]
pub struct Observed {
    /// Bytes sent.
    pub bytes: u64,
    /// SHA-256 of the source file.
    pub local_sha256: String,
    /// SHA-256 the data handler computed.
    pub data_sha256: String,
    /// The result reported by the control call.
    pub result: TransferResult,
    /// Whether the written file equals the source.
    pub identical: bool,
    /// A second upload with a made-up ticket: the error code.
    pub bad_ticket: Option<tonic::Code>,
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    hash.update(std::fs::read(path)?);
    Ok(format!("{:x}", hash.finalize()))
}

/// Runs a server and uploads one file through it.
pub async fn run() -> Result<Observed, Box<dyn std::error::Error>> {
    let mut observed = Observed::default();
    let incoming = tempfile::tempdir()?;
    let outgoing = tempfile::tempdir()?;

    // The server: control service and data handler on one port, with
    // CRC-32 checksums of bodies offered.
    let transfers = Arc::new(Transfers::default());
    let dir = incoming.path().to_path_buf();
    let t = transfers.clone();
    let server = Server::builder()
        .control(tonic::service::Routes::new(BulkServer::new(Control(
            transfers.clone(),
        ))))
        .data(move |request: DataRequest| receive(t.clone(), dir.clone(), request))
        .checksums(true)
        .serve(Listener::tcp("127.0.0.1:0").await?)?;
    println!("server on {}", server.address());

    // A file to send.
    let source = outgoing.path().join("dataset.bin");
    let data: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 31 + i / 977) as u8).collect();
    std::fs::write(&source, &data)?;
    drop(data);
    observed.local_sha256 = sha256_file(&source)?;

    // The client: control calls over its channel, the bytes over a data
    // connection to the backend the same channel picked.
    let client = Client::builder(format!("ipv4:{}", server.address()))
        .checksums(true)
        .build()?;
    let mut control = BulkClient::new(client.channel().clone());
    let ticket = control
        .open(OpenTransfer {
            name: "dataset.bin".into(),
            size: FILE_SIZE as u64,
        })
        .await?
        .into_inner()
        .ticket;
    println!("opened transfer {ticket}");
    let file = tokio::fs::File::open(&source).await?;
    let mut response = client
        .call("upload", ticket.clone(), Some(Box::new(file)))
        .await?;
    observed.bytes = response.upload_result().await?;
    observed.data_sha256 = String::from_utf8(response.message.to_vec())?;
    println!(
        "sent {} bytes; the data handler hashed sha256 {}",
        observed.bytes, observed.data_sha256
    );
    observed.result = control
        .result(TransferTicket {
            ticket: ticket.clone(),
        })
        .await?
        .into_inner();
    println!("Result({ticket}) → {:?}", observed.result);
    let written = incoming.path().join(&observed.result.name);
    observed.identical = std::fs::read(&written)? == std::fs::read(&source)?;
    println!(
        "local sha256 {}; file written identical: {}",
        observed.local_sha256, observed.identical
    );

    // A data call without a valid ticket is refused.
    observed.bad_ticket = client
        .call("upload", "t-999", Some(Box::new(&b"sneaky"[..])))
        .await
        .err()
        .map(|e| e.code());
    println!("upload with a made-up ticket → {:?}", observed.bad_ticket);
    server.shutdown().await;
    Ok(observed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await?;
    Ok(())
}
