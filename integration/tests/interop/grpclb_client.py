"""A gRPC C-core client (Python grpcio) using the grpclb policy.

Usage: grpclb_client.py TARGET CALLS

TARGET is a dns://AUTHORITY/NAME:PORT target whose DNS server has the
`_grpclb._tcp.NAME` SRV record pointing at the balancer. Makes CALLS
unary calls to movies.v1.MoviesService/GetMovie (MovieId{mid: 1}, encoded
by hand so no generated code is needed) with wait-for-ready, and prints
one line per call: "ok" or the status code name.
"""

import json
import os
import sys

os.environ.setdefault("GRPC_DNS_RESOLVER", "ares")

import grpc  # noqa: E402


def main() -> int:
    target, calls = sys.argv[1], int(sys.argv[2])
    config = {"loadBalancingConfig": [{"grpclb": {"childPolicy": [{"round_robin": {}}]}}]}
    options = [
        ("grpc.dns_enable_srv_queries", 1),
        ("grpc.service_config", json.dumps(config)),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        get_movie = channel.unary_unary("/movies.v1.MoviesService/GetMovie")
        for _ in range(calls):
            try:
                get_movie(b"\x08\x01", timeout=10, wait_for_ready=True)
                print("ok", flush=True)
            except grpc.RpcError as error:
                print(error.code().name, error.details(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
