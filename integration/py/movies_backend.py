"""gRPC C-core (Python grpcio) servers of movies.v1.MoviesService/GetMovie.

Usage: movies_backend.py NAME[@HOST:PORT]... [--option KEY=INT]...
                         [--tls CERT_FILE KEY_FILE [--client-ca CA_FILE]]

Starts one grpcio server per NAME, on HOST:PORT when given, else on a free
port of 127.0.0.1, each
answering GetMovie with a Movie whose served_by (field 5) is its NAME
(encoded by hand, so no generated code is needed), and echoing the call's
`lb-token` metadata, when it has one, as trailing metadata
`x-lb-token-seen`. Every --option is handed
to each server as a channel argument, e.g.
`--option grpc.max_connection_age_ms=300`. With --tls the servers speak TLS
with that certificate and key (`grpc.ssl_server_credentials`), and with
--client-ca require a client certificate signed by that CA. Prints
"listening NAME HOST:PORT" for
each server, then "ready", and serves until its standard input ends.
"""

import sys
from concurrent import futures

import grpc


def movie(served_by: str) -> bytes:
    name = served_by.encode()
    # Field 5, wire type 2 (length-delimited); names are short (< 128 bytes).
    return bytes([5 << 3 | 2, len(name)]) + name


def server_for(name: str, address: str, options: list, credentials) -> tuple:
    reply = movie(name)

    def get_movie(request: bytes, context) -> bytes:
        for key, value in context.invocation_metadata():
            if key == "lb-token":
                context.set_trailing_metadata((("x-lb-token-seen", value),))
        return reply

    handler = grpc.method_handlers_generic_handler(
        "movies.v1.MoviesService",
        {
            "GetMovie": grpc.unary_unary_rpc_method_handler(
                get_movie,
                request_deserializer=None,
                response_serializer=None,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    return server, port


def main() -> int:
    names, options = [], []
    tls, client_ca = None, None
    args = iter(sys.argv[1:])
    for arg in args:
        if arg == "--option":
            key, value = next(args).split("=", 1)
            options.append((key, int(value)))
        elif arg == "--tls":
            tls = (next(args), next(args))
        elif arg == "--client-ca":
            client_ca = next(args)
        else:
            names.append(arg)
    credentials = None
    if tls is not None:
        read = lambda path: open(path, "rb").read()  # noqa: E731
        credentials = grpc.ssl_server_credentials(
            [(read(tls[1]), read(tls[0]))],
            root_certificates=read(client_ca) if client_ca else None,
            require_client_auth=client_ca is not None,
        )
    servers = []
    for spec in names:
        name, _, address = spec.partition("@")
        address = address or "127.0.0.1:0"
        server, port = server_for(name, address, options, credentials)
        servers.append(server)
        host = address.rsplit(":", 1)[0]
        print(f"listening {name} {host}:{port}", flush=True)
    print("ready", flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
