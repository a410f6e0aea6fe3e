"""A gRPC C-core client (Python grpcio) with a given service config.

Usage: policy_client.py TARGET SERVICE_CONFIG_JSON HEADER KEY...
       policy_client.py TARGET SERVICE_CONFIG_JSON --rounds N [WARMUP_SECONDS]

Calls movies.v1.MoviesService/GetMovie (MovieId{mid: 1}, encoded by hand)
five times per KEY with the metadata HEADER: KEY, wait-for-ready, and
prints "KEY NAME" (Movie.served_by) when the five agree, "KEY MIXED a,b"
when they do not. With --rounds, makes N rounds of 100 fail-fast calls and
prints "round I NAME=COUNT ... failed=COUNT" for each (a failed call names
its backend in its message, "NAME fails on purpose", when it has one).
Then "done".

ring_hash's requestHashHeader needs the environment variable
GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY=true in grpcio 1.85 (set
here).
"""

import os
import sys

os.environ.setdefault("GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY", "true")

import grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpclb_client import served_by  # noqa: E402


def main() -> int:
    target, config, header, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    # (an ipv4: list target would make an authority with commas)
    options = [("grpc.service_config", config), ("grpc.default_authority", "movies.test")]
    with grpc.insecure_channel(target, options=options) as channel:
        get_movie = channel.unary_unary("/movies.v1.MoviesService/GetMovie")
        if header == "--rounds":
            # An optional warm-up, in seconds, of unreported calls first
            # (for policies whose weights take time, such as WRR's blackout).
            if len(keys) > 1:
                import time
                until = time.monotonic() + float(keys[1])
                while time.monotonic() < until:
                    try:
                        get_movie(b"\x08\x01", timeout=10)
                    except grpc.RpcError:
                        pass
            for i in range(int(keys[0])):
                counts: dict[str, int] = {}
                for _ in range(100):
                    try:
                        name = served_by(get_movie(b"\x08\x01", timeout=10))
                    except grpc.RpcError as error:
                        details = error.details() or ""
                        name = details.split(" ")[0] if "on purpose" in details else "failed"
                    counts[name] = counts.get(name, 0) + 1
                shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                print("round", i, shown, flush=True)
            print("done", flush=True)
            return 0
        for key in keys:
            names = {
                served_by(get_movie(b"\x08\x01", timeout=10, wait_for_ready=True, metadata=((header, key),)))
                for _ in range(5)
            }
            if len(names) == 1:
                print(key, names.pop(), flush=True)
            else:
                print(key, "MIXED", ",".join(sorted(names)), flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
