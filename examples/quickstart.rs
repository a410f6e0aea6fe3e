//! The quickstart: three real tonic backends and a client that shows how its
//! calls spread.
//!
//! Today the client spreads calls over the three addresses itself, because
//! waypost's resolvers, balancing policies and balancer server are still
//! being built (see the README's feature table). As they land, this example
//! becomes: `waypost serve` on its embedded registry, three backends, and a
//! client whose channel is balanced by it.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::collections::BTreeMap;

use tonic::transport::Endpoint;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_integration::backend::start_backends;

const CALLS: usize = 30;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backends = start_backends(3).await?;
    let mut clients = Vec::new();
    for backend in &backends {
        println!("backend {} listening on {}", backend.name(), backend.addr());
        let channel = Endpoint::from_shared(format!("http://{}", backend.addr()))?
            .connect()
            .await?;
        clients.push(MoviesServiceClient::new(channel));
    }

    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..CALLS {
        let n = clients.len();
        let client = &mut clients[i % n];
        let movie = client
            .get_movie(MovieId {
                mid: 1 + (i % 5) as i32,
            })
            .await?
            .into_inner();
        *spread.entry(movie.served_by).or_default() += 1;
    }
    println!("\n{CALLS} calls, served by:");
    for (backend, calls) in &spread {
        println!("  {backend}: {calls}");
    }
    println!(
        "\n(waypost's resolvers, round_robin policy and `waypost serve` balancer are in progress; \
         this demo will route through them as they land.)"
    );
    Ok(())
}
