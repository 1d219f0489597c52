"""The redo service process: gRPC ``pagestore.redo.v1.Redo``.

Page reconstruction (base image + WAL records -> page) lands with the redo issue; until
then the process serves health checks only, and the Redo RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations

import sys

from pagestore.service import ServiceContext, run_service


async def setup(ctx: ServiceContext) -> None:
    return None


def main() -> int:
    return run_service("redo", setup, uses_catalog=False)


if __name__ == "__main__":
    sys.exit(main())
