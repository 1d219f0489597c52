"""Full-page images in real WAL, with every PG15 compression: restore_block_image rebuilds
pages whose header is consistent and whose hole is zeros, for every image to apply."""

from __future__ import annotations

import struct

import pytest

from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.pg.xlogrecord import (
    BKPIMAGE_COMPRESS_LZ4,
    BKPIMAGE_COMPRESS_PGLZ,
    BKPIMAGE_COMPRESS_ZSTD,
    restore_block_image,
)

FLAG = {"pglz": BKPIMAGE_COMPRESS_PGLZ, "lz4": BKPIMAGE_COMPRESS_LZ4, "zstd": BKPIMAGE_COMPRESS_ZSTD,
        "off": 0}
# PageHeaderData: pd_lsn 8, pd_checksum u16, pd_flags u16, pd_lower u16, pd_upper u16,
# pd_special u16, pd_pagesize_version u16, pd_prune_xid u32
PAGE_HEADER = struct.Struct("<QHHHHHHI")


@pytest.mark.parametrize("compression", ["off", "pglz", "lz4", "zstd"])
def test_images_restore(pg_factory, compression: str) -> None:
    primary = pg_factory(settings={"wal_compression": compression})
    primary.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g")
    primary.psql("CREATE INDEX ON t (v)")
    primary.psql("CHECKPOINT")
    primary.psql("UPDATE t SET v = v || 'x' WHERE g % 50 = 0")
    primary.stop()
    restored = compressed = 0
    for rec in read_wal_records(find_segments([primary.datadir / "pg_wal"])):
        for blk in rec.blocks:
            if not blk.has_image:
                continue
            page = restore_block_image(blk, rec.lsn)
            assert len(page) == 8192
            _lsn, _ck, _flags, lower, upper, special, size_version, _prune = \
                PAGE_HEADER.unpack_from(page)
            if upper == 0:
                continue  # a new, all-zero page
            assert size_version == 8192 | 4, (rec.lsn, blk.block_id)
            assert 24 <= lower <= upper <= special <= 8192, (rec.lsn, lower, upper, special)
            if blk.hole_length:
                hole = page[blk.hole_offset:blk.hole_offset + blk.hole_length]
                assert hole == bytes(blk.hole_length)
            restored += 1
            if blk.bimg_info & FLAG[compression]:
                compressed += 1
    assert restored > 50
    if compression != "off":
        assert compressed > 50, f"no {compression}-compressed images found"
