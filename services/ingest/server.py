"""The ingest service process: the WAL receiver (gRPC ``pagestore.ingest.v1.Ingest``).

It checks the catalog revision at start.  WAL streaming, decoding and layer flushes
land with the ingest issue; until then the process serves health checks only.
"""

from __future__ import annotations

import sys

from pagestore.service import ServiceContext, run_service


async def setup(ctx: ServiceContext) -> None:
    return None


def main() -> int:
    return run_service("ingest", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
