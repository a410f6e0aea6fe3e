"""A gRPC C-core client (Python grpcio) using the grpclb policy.

Usage: grpclb_client.py TARGET BACKENDS CALLS [--tls CA_FILE]

TARGET is a dns://AUTHORITY/NAME:PORT target whose DNS server has the
`_grpclb._tcp.NAME` SRV record pointing at the balancer. Calls
movies.v1.MoviesService/GetMovie (MovieId{mid: 1}, encoded by hand so no
generated code is needed) with wait-for-ready: first until the replies
(Movie.served_by) have named BACKENDS distinct backends — the policy has them
all READY — printing "warm NAME" for each, then CALLS more, printing
"ok NAME" or the status code name for each — "ok NAME TOKEN" when the
backend echoed the call's lb-token as trailing metadata `x-lb-token-seen`.
Then it prints "done" and keeps the channel open until standard input ends,
so its grpclb policy goes on sending ClientStats reports to the balancer.

With --tls the channel uses `grpc.ssl_channel_credentials` trusting CA_FILE:
C-core verifies the balancer as the SRV record's target name and the
backends as the target's host.
"""

import json
import os
import sys

os.environ.setdefault("GRPC_DNS_RESOLVER", "ares")

import grpc  # noqa: E402

WARM_UP_LIMIT = 1000


def varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def served_by(movie: bytes) -> str:
    """Field 5 (served_by) of a movies.v1.Movie."""
    i = 0
    while i < len(movie):
        key, i = varint(movie, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(movie, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = varint(movie, i)
            if field == 5:
                return movie[i : i + length].decode()
            i += length
        else:
            raise ValueError(f"wire type {wire}")
    return ""


def main() -> int:
    target, backends, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ca = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--tls" else None
    config = {"loadBalancingConfig": [{"grpclb": {"childPolicy": [{"round_robin": {}}]}}]}
    options = [
        ("grpc.dns_enable_srv_queries", 1),
        ("grpc.service_config", json.dumps(config)),
    ]
    if ca is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        with open(ca, "rb") as file:
            credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        get_movie = channel.unary_unary("/movies.v1.MoviesService/GetMovie")

        def call() -> str:
            movie, outcome = get_movie.with_call(
                b"\x08\x01", timeout=10, wait_for_ready=True
            )
            name = served_by(movie)
            for key, value in outcome.trailing_metadata() or ():
                if key == "x-lb-token-seen":
                    return f"{name} {value}"
            return name

        seen: set[str] = set()
        for _ in range(WARM_UP_LIMIT):
            if len(seen) == backends:
                break
            name = call()
            print("warm", name, flush=True)
            seen.add(name.split(" ")[0])
        for _ in range(calls):
            try:
                print("ok", call(), flush=True)
            except grpc.RpcError as error:
                print(error.code().name, error.details(), flush=True)
        print("done", flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
