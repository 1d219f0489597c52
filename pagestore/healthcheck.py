"""``python -m pagestore.healthcheck [--config PATH] HOST:PORT``: exit 0 if the gRPC server
there reports SERVING on grpc.health.v1, else 1 (for container health checks).

Health checks need no token; with ``--config`` naming a config whose ``ssl_cert_file`` is
set, the check speaks TLS and trusts that config's CA (``ssl_ca_file``, else the
certificate itself), as the services' own clients do."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagestore.auth import trusted_certificates
from pagestore.config import load_config
from pagestore.errors import PagestoreError
from pagestore.grpcutil import check_health, configure_clients


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagestore.healthcheck")
    parser.add_argument("--config", type=Path, default=None,
                        help="the service's config (for its TLS settings)")
    parser.add_argument("addr", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    if args.config is not None:
        if not args.config.is_file():
            print(f"error: config {args.config} does not exist", file=sys.stderr)
            return 2
        try:
            configure_clients(root_certificates=trusted_certificates(load_config(args.config)))
        except PagestoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    status = check_health(args.addr)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
