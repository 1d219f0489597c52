"""The page-read service process: ``page_api.PageService`` and
``pagestore.pageread.v1.PageReadExtras`` on one gRPC port.

It checks the catalog revision at start.  The read path lands with the page-read issue;
until then the process serves health checks only.
"""

from __future__ import annotations

import sys

from pagestore.service import ServiceContext, run_service


async def setup(ctx: ServiceContext) -> None:
    return None


def main() -> int:
    return run_service("pageread", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
