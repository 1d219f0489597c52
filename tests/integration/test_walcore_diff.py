"""The compiled WAL decoder core and the pure-Python reference over real workloads' WAL.

The WAL of pgbench (-i, then TPC-B transactions) and of the maintenance workload (DDL,
CREATE DATABASE, TOAST, two-phase commit, multixacts, ...) with wal_compression lz4,
decoded from its segment files by both implementations, fed to each in the same odd
chunks: every record equal in every field, and both stop at the same end of WAL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pagestore.lsn import Lsn
from pagestore.pg.waldecoder import EndOfWal, WalStreamDecoder
from pagestore.pg.walfiles import find_segments
from pagestore.pg.xlogrecord import walcore
from tests.unit.test_walcore import fields
from tests.workloads import run_maintenance, run_pgbench

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def decode_all(wal_dir: Path, chunk: int, compiled: bool) -> tuple[list[tuple], str]:
    segments = find_segments([wal_dir])
    start = segments[0].segno * 16 * 1024 * 1024
    dec = WalStreamDecoder(Lsn(start), compiled=compiled)
    got: list[tuple] = []
    try:
        for seg in segments:
            data = seg.path.read_bytes()
            for i in range(0, len(data), chunk):
                dec.feed(data[i:i + chunk])
                while (rec := dec.poll()) is not None:
                    got.append(fields(rec))
    except EndOfWal as e:
        return got, str(e)
    return got, "no end of WAL"


@pytest.mark.parametrize("workload", ["pgbench", "maintenance"])
def test_compiled_core_decodes_real_wal_as_the_reference(pg_factory, workload: str) -> None:
    assert walcore is not None, "the compiled core is not built (scripts/setup builds it)"
    settings = {"wal_keep_size": "'1GB'"}
    if workload == "maintenance":
        settings["wal_compression"] = "lz4"
    primary = pg_factory(settings=settings)
    if workload == "pgbench":
        run_pgbench(primary, scale=3, transactions=2000)
    else:
        run_maintenance(primary)
    primary.stop()
    wal_dir = primary.datadir / "pg_wal"
    reference, ref_end = decode_all(wal_dir, 1 << 20, compiled=False)
    assert len(reference) > 5000
    for chunk in (1 << 20, 8191):
        ours, our_end = decode_all(wal_dir, chunk, compiled=True)
        assert len(ours) == len(reference)
        for i, (a, b) in enumerate(zip(ours, reference, strict=True)):
            assert a == b, f"record #{i} at {b[1]} differs"
        assert our_end == ref_end
    kinds = {(r[5].xl_rmid, bool(r[7])) for r in reference}
    assert (0, True) in kinds or workload == "pgbench"  # XLOG records with images (FPI)
    assert any(b[7] for r in reference for b in r[7])  # some block images
