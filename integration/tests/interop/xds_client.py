"""A gRPC C-core client (Python grpcio) on an xds:/// target.

Usage: xds_client.py TARGET   (GRPC_XDS_BOOTSTRAP names the bootstrap file,
                              or GRPC_XDS_BOOTSTRAP_CONFIG holds it)

Opens one channel to TARGET, makes one wait-for-ready call (so the xDS
resources are in), prints "ready", then reads commands from standard input,
answering each and printing "ok" after it:

  rounds N        N rounds of 100 fail-fast calls to
                  movies.v1.MoviesService/GetMovie; prints
                  "round I NAME=COUNT ... dropped=COUNT failed=COUNT" per
                  round (dropped: UNAVAILABLE with C-core's
                  "EDS-configured drop" message; failed: any other error),
                  and the first drop message as "drop-message TEXT".
  keys HEADER K…  five wait-for-ready calls per key K with metadata
                  HEADER: K; prints "K NAME" when the five agree, "K MIXED
                  a,b" when they do not.

The channel stays open until standard input ends, so the xDS client keeps
its ADS stream.
"""

import sys

import grpc

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from grpclb_client import served_by  # noqa: E402

REQUEST = b"\x08\x01"  # MovieId{mid: 1}


def rounds(get_movie, n: int) -> None:
    shown_drop = False
    for i in range(n):
        counts: dict[str, int] = {}
        for _ in range(100):
            try:
                name = served_by(get_movie(REQUEST, timeout=10))
            except grpc.RpcError as error:
                details = error.details() or ""
                if error.code() == grpc.StatusCode.UNAVAILABLE and "EDS-configured drop" in details:
                    name = "dropped"
                    if not shown_drop:
                        print("drop-message", details, flush=True)
                        shown_drop = True
                else:
                    name = "failed"
            counts[name] = counts.get(name, 0) + 1
        shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print("round", i, shown, flush=True)


def keys(get_movie, header: str, values: list[str]) -> None:
    for key in values:
        names = {
            served_by(get_movie(REQUEST, timeout=10, wait_for_ready=True, metadata=((header, key),)))
            for _ in range(5)
        }
        if len(names) == 1:
            print(key, names.pop(), flush=True)
        else:
            print(key, "MIXED", ",".join(sorted(names)), flush=True)


def main() -> int:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        get_movie = channel.unary_unary("/movies.v1.MoviesService/GetMovie")
        # (a configured drop fails even a wait-for-ready call: try again)
        for attempt in range(50):
            try:
                get_movie(REQUEST, timeout=30, wait_for_ready=True)
                break
            except grpc.RpcError as error:
                if attempt == 49 or "EDS-configured drop" not in (error.details() or ""):
                    raise
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "rounds":
                rounds(get_movie, int(words[1]))
            elif words[0] == "keys":
                keys(get_movie, words[1], words[2:])
            else:
                print("unknown command", words[0], flush=True)
            print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
