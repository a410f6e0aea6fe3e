"""gRPC C-core (Python grpcio) servers of movies.v1.MoviesService/GetMovie.

Usage: movies_backend.py NAME[@HOST:PORT]... [--option KEY=INT]...

Starts one grpcio server per NAME, on HOST:PORT when given, else on a free
port of 127.0.0.1, each
answering GetMovie with a Movie whose served_by (field 5) is its NAME
(encoded by hand, so no generated code is needed). Every --option is handed
to each server as a channel argument, e.g.
`--option grpc.max_connection_age_ms=300`. Prints "listening NAME HOST:PORT" for
each server, then "ready", and serves until its standard input ends.
"""

import sys
from concurrent import futures

import grpc


def movie(served_by: str) -> bytes:
    name = served_by.encode()
    # Field 5, wire type 2 (length-delimited); names are short (< 128 bytes).
    return bytes([5 << 3 | 2, len(name)]) + name


def server_for(name: str, address: str, options: list) -> tuple:
    reply = movie(name)

    def get_movie(request: bytes, context) -> bytes:
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
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    return server, port


def main() -> int:
    names, options = [], []
    args = iter(sys.argv[1:])
    for arg in args:
        if arg == "--option":
            key, value = next(args).split("=", 1)
            options.append((key, int(value)))
        else:
            names.append(arg)
    servers = []
    for spec in names:
        name, _, address = spec.partition("@")
        address = address or "127.0.0.1:0"
        server, port = server_for(name, address, options)
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
