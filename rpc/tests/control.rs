//! Control connections (tonic over the handshake and `control` label),
//! unix sockets and TLS with client certificates.

mod support;

use std::time::Duration;

use support::*;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_proto::movies::v1::movies_service_server::{MoviesService, MoviesServiceServer};
use waypost_proto::movies::v1::{Movie, MovieId, MovieQuery};
use waypost_rpc::{Client, DataRequest, DataResponse, Listener, PeerInfo, Server};

/// Answers with who called: the client certificate's CN, else the address.
#[derive(Debug, Default)]
struct WhoAmI;

fn caller(peer: Option<&PeerInfo>) -> String {
    match peer {
        Some(PeerInfo {
            identity: Some(identity),
            ..
        }) => format!("cn={}", identity.common_name.clone().unwrap_or_default()),
        Some(peer) => format!("addr={}", peer.remote),
        None => "unknown".into(),
    }
}

#[tonic::async_trait]
impl MoviesService for WhoAmI {
    async fn get_movie(
        &self,
        request: tonic::Request<MovieId>,
    ) -> Result<tonic::Response<Movie>, tonic::Status> {
        Ok(tonic::Response::new(Movie {
            mid: request.get_ref().mid,
            movie_name: caller(request.extensions().get::<PeerInfo>()),
            ..Movie::default()
        }))
    }

    type QueryMoviesStream = tokio_stream::wrappers::ReceiverStream<Result<Movie, tonic::Status>>;

    async fn query_movies(
        &self,
        request: tonic::Request<MovieQuery>,
    ) -> Result<tonic::Response<Self::QueryMoviesStream>, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let who = caller(request.extensions().get::<PeerInfo>());
        tokio::spawn(async move {
            for mid in 0..3 {
                let movie = Movie {
                    mid,
                    movie_name: who.clone(),
                    ..Movie::default()
                };
                if tx.send(Ok(movie)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

async fn whoami_data(request: DataRequest) -> Result<DataResponse, tonic::Status> {
    Ok(DataResponse::new(caller(Some(&request.peer))))
}

fn routes() -> tonic::service::Routes {
    tonic::service::Routes::new(MoviesServiceServer::new(WhoAmI))
}

async fn exercise(client: &Client, expect: &str) {
    let mut movies = MoviesServiceClient::new(client.channel().clone());
    let mut request = tonic::Request::new(MovieId { mid: 42 });
    request.set_timeout(Duration::from_secs(5));
    let movie = movies.get_movie(request).await.unwrap().into_inner();
    assert_eq!(movie.mid, 42);
    assert!(movie.movie_name.starts_with(expect), "{}", movie.movie_name);
    let mut stream = movies
        .query_movies(MovieQuery::default())
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(movie) = stream.message().await.unwrap() {
        assert!(movie.movie_name.starts_with(expect));
        n += 1;
    }
    assert_eq!(n, 3);
    let response = client.call("whoami", "", None).await.unwrap();
    let who = String::from_utf8(response.message.to_vec()).unwrap();
    assert!(who.starts_with(expect), "{who}");
}

#[tokio::test]
async fn control_and_data_share_one_tcp_endpoint() {
    let server = Server::builder()
        .control(routes())
        .data(whoami_data)
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = Client::builder(target(&server)).build().unwrap();
    exercise(&client, "addr=127.0.0.1:").await;
    let stats = server.stats();
    assert_eq!(stats.control_connections, 1, "{stats:?}");
    assert_eq!(stats.data_connections, 1, "{stats:?}");
}

#[tokio::test]
async fn control_and_data_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    let server = Server::builder()
        .control(routes())
        .data(whoami_data)
        .serve(Listener::unix(&path).unwrap())
        .unwrap();
    let client = Client::builder(format!("unix:{}", path.display()))
        .build()
        .unwrap();
    exercise(&client, "addr=unix:").await;
    server.shutdown().await;
}

#[tokio::test]
async fn tls_client_identity_reaches_grpc_and_data_handlers() {
    let (server_tls, client_tls) = tls_pair("client-a");
    let server = Server::builder()
        .control(routes())
        .data(whoami_data)
        .tls(server_tls)
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = Client::builder(target(&server))
        .tls(client_tls)
        .build()
        .unwrap();
    exercise(&client, "cn=client-a").await;

    // A client without a certificate does not get in.
    let (_, other_ca_client) = tls_pair("intruder");
    let intruder = Client::builder(target(&server))
        .tls(other_ca_client)
        .pick_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = intruder.call("whoami", "", None).await.unwrap_err();
    assert!(matches!(err, waypost_rpc::Error::Unavailable(_)), "{err:?}");
    assert!(server.stats().handshake_failures >= 1);
}

#[tokio::test]
async fn tls_bulk_transfer_round_trips() {
    let (server_tls, client_tls) = tls_pair("bulk");
    let server = Server::builder()
        .data(
            |request: DataRequest| async move { Ok(DataResponse::new("").with_body(request.body)) },
        )
        .tls(server_tls)
        .checksums(true)
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = Client::builder(target(&server))
        .tls(client_tls)
        .checksums(true)
        .build()
        .unwrap();
    let data = pattern(5 << 20);
    let response = client
        .call(
            "echo",
            "",
            Some(Box::new(std::io::Cursor::new(data.clone()))),
        )
        .await
        .unwrap();
    assert!(response.body.collect(6 << 20).await.unwrap()[..] == data[..]);
}
