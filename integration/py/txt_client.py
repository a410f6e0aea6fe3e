"""A gRPC C-core client (Python grpcio) whose service config comes from DNS.

Usage: txt_client.py TARGET CALLS

TARGET is a dns://AUTHORITY/NAME:PORT target; the channel is given no
service config, so C-core takes it from the `_grpc_config.NAME` TXT record
(C-core looks TXT records up only when asked to:
`grpc.service_config_disable_resolution = 0`).
Makes CALLS calls to movies.v1.MoviesService/GetMovie (wait-for-ready) and
prints the backend that served each (Movie.served_by), one per line.
"""

import os
import sys

os.environ.setdefault("GRPC_DNS_RESOLVER", "ares")

import grpc  # noqa: E402


def served_by(movie: bytes) -> str:
    """Field 5 of a movies.v1.Movie; the backends send only that field."""
    if len(movie) < 2 or movie[0] != (5 << 3 | 2):
        raise ValueError(f"unexpected reply {movie!r}")
    return movie[2 : 2 + movie[1]].decode()


def main() -> int:
    target, calls = sys.argv[1], int(sys.argv[2])
    options = [("grpc.service_config_disable_resolution", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        get_movie = channel.unary_unary("/movies.v1.MoviesService/GetMovie")
        for _ in range(calls):
            print(served_by(get_movie(b"\x08\x01", timeout=10, wait_for_ready=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
