"""``python -m pagestore.healthcheck HOST:PORT``: exit 0 if the gRPC server there reports
SERVING on grpc.health.v1, else 1 (for container health checks)."""

from __future__ import annotations

import sys

from pagestore.grpcutil import check_health


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pagestore.healthcheck HOST:PORT", file=sys.stderr)
        return 2
    status = check_health(argv[0])
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
