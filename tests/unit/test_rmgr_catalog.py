"""The catalog of PostgreSQL 15 record types (pagestore/pg/rmgr.py RECORD_TYPES) and what
pagestore does with each (pagestore/pg/recordtypes.py): names as pg_waldump prints them,
the per-rmgr masks, agreement with the redo modules and with WAL ingest, and the table in
docs/redo.md.

The names were checked against pg_waldump 15 itself (``--stats=record`` over the WAL of
tests/workloads/*.sql plus logical messages, replication origins, bloom, tablespaces, a
logical slot with VACUUM FULL and a backup: per-kind record counts identical for 109 of
the 123 kinds); this file keeps a handful of known entries so the table cannot drift.
"""

from __future__ import annotations

import importlib
import struct
from pathlib import Path

import pytest

from pagestore.errors import CorruptionError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ, RelTag
from pagestore.lsn import Lsn
from pagestore.pg.controlfile import CHECKPOINT, CheckPoint
from pagestore.pg.recordtypes import (
    RECORD_HANDLING,
    REDO_MODULES,
    Handling,
    markdown_table,
    record_handling,
)
from pagestore.pg.rmgr import (
    ALL_RECORD_KINDS,
    RECORD_TYPES,
    RM_MAX_BUILTIN_ID,
    RmgrId,
    record_kind,
    record_type_name,
)
from pagestore.pg.xlogrecord import (
    BKPBLOCK_HAS_DATA,
    BlockReference,
    DecodedRecord,
    XLogRecordHeader,
)
from pagestore.redo.context import RedoContext
from services.ingest import walingest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("rmid", "info", "name"), [
    (RmgrId.XLOG, 0x00, "CHECKPOINT_SHUTDOWN"),
    (RmgrId.XLOG, 0xB0, "FPI"),
    (RmgrId.XACT, 0x60, "INVALIDATION"),        # singular, unlike Standby's
    (RmgrId.STANDBY, 0x20, "INVALIDATIONS"),
    (RmgrId.HEAP, 0x00, "INSERT"),
    (RmgrId.HEAP, 0x80, "INSERT+INIT"),
    (RmgrId.HEAP, 0xC0, "HOT_UPDATE+INIT"),
    (RmgrId.HEAP, 0x50, "HEAP_CONFIRM"),
    (RmgrId.HEAP2, 0x00, "REWRITE"),
    (RmgrId.HEAP2, 0xD0, "MULTI_INSERT+INIT"),
    (RmgrId.BTREE, 0x00, "INSERT_LEAF"),
    (RmgrId.BTREE, 0xE0, "META_CLEANUP"),
    (RmgrId.GIN, 0x90, "VACUUM_DATA_LEAF_PAGE"),
    (RmgrId.GIST, 0x60, "PAGE_DELETE"),
    (RmgrId.BRIN, 0x90, "INSERT+INIT"),
    (RmgrId.DBASE, 0x10, "CREATE_WAL_LOG"),
    (RmgrId.GENERIC, 0x00, "Generic"),
    (RmgrId.LOGICALMSG, 0x00, "MESSAGE"),
])
def test_known_entries(rmid: int, info: int, name: str) -> None:
    assert RECORD_TYPES[rmid, info] == name
    assert record_type_name(rmid, info) == name


def test_masks() -> None:
    # Transaction: XLOG_XACT_HAS_INFO (0x80) is not part of the type.
    assert record_type_name(RmgrId.XACT, 0x80) == "COMMIT"
    assert record_type_name(RmgrId.XACT, 0xA0) == "ABORT"
    assert record_type_name(RmgrId.XACT, 0x70) == "UNKNOWN (70)"
    # Heap's INIT_PAGE bit names a type of its own, only with INSERT/UPDATE/HOT_UPDATE.
    assert record_type_name(RmgrId.HEAP, 0x90) == "UNKNOWN (90)"
    assert record_type_name(RmgrId.HEAP2, 0x90) == "UNKNOWN (90)"
    assert record_type_name(RmgrId.BRIN, 0xB0) == "UNKNOWN (b0)"
    # generic_identify names every info "Generic".
    assert record_type_name(RmgrId.GENERIC, 0x10) == "Generic"
    assert record_type_name(RmgrId.XLOG, 0xC0) == "UNKNOWN (c0)"
    assert record_type_name(130, 0x00) == "UNKNOWN (0)"  # a custom rmgr
    assert record_kind(RmgrId.HEAP, 0x80) == "Heap/INSERT+INIT"
    assert record_kind(RmgrId.XACT, 0x80) == "Transaction/COMMIT"
    assert record_kind(130, 0x10) == "custom130/UNKNOWN (10)"


def test_every_builtin_rmgr_is_covered() -> None:
    assert {rmid for rmid, _ in RECORD_TYPES} == set(range(RM_MAX_BUILTIN_ID + 1))
    assert all(info & 0x0F == 0 for _, info in RECORD_TYPES)
    assert all(info & 0x80 == 0 for rmid, info in RECORD_TYPES if rmid == RmgrId.XACT)
    assert len(set(ALL_RECORD_KINDS)) == len(RECORD_TYPES) == 123


def test_every_record_type_has_a_handling() -> None:
    assert RECORD_HANDLING.keys() == RECORD_TYPES.keys()
    for key, h in RECORD_HANDLING.items():
        assert h.note, key
        assert (h.handling is Handling.REDO) <= (key[0] in REDO_MODULES), key
    assert record_handling(RmgrId.XACT, 0x80) == RECORD_HANDLING[RmgrId.XACT, 0x00]
    assert record_handling(RmgrId.HEAP, 0x90) is None
    assert {k for k, h in RECORD_HANDLING.items() if h.handling is Handling.IMAGE} == {
        (RmgrId.XLOG, 0xA0), (RmgrId.XLOG, 0xB0)}


def _record(rmid: int, info: int, main_data: bytes = b"",
            with_block: bool = False) -> DecodedRecord:
    blocks: tuple[BlockReference, ...] = ()
    if with_block:
        blocks = (BlockReference(0, RelTag(1663, 5, 16384, 0), 0, BKPBLOCK_HAS_DATA, 0, 0, 0,
                                 b"", b""),)
    return DecodedRecord(Lsn(0x100_0000), Lsn(0x100_0100),
                         XLogRecordHeader(100, 0, 0, info, rmid, 0), blocks, main_data, None,
                         None, b"")


def _kinds(keys: list[tuple[int, int]]) -> list[str]:
    return [record_kind(rmid, info) for rmid, info in keys]


_REDONE = sorted(k for k, h in RECORD_HANDLING.items() if h.handling is Handling.REDO)
_NOT_REDONE_RMGRS = sorted(k for k in RECORD_HANDLING if k[0] not in REDO_MODULES)


@pytest.mark.parametrize("key", _REDONE, ids=_kinds(_REDONE))
def test_redo_modules_know_their_record_types(key: tuple[int, int]) -> None:
    """A record the catalog says is redone reaches its redo code: with no data it may
    fail as malformed, never as a record type the module does not know."""
    rmid, info = key
    mod = importlib.import_module(REDO_MODULES[RmgrId(rmid)])
    try:
        mod.redo_block(RedoContext(), _record(rmid, info, with_block=True), 0,
                       bytearray(BLCKSZ))
    except UnsupportedWalRecord as e:
        pytest.fail(f"{record_kind(rmid, info)}: {e}")
    except Exception:  # malformed on purpose: any error but an unknown type will do
        pass


def _ingest_state() -> walingest.TimelineState:
    return walingest.TimelineState(checkpoint=CheckPoint.unpack(bytes(CHECKPOINT.size)))


@pytest.mark.parametrize("key", _NOT_REDONE_RMGRS, ids=_kinds(_NOT_REDONE_RMGRS))
def test_ingest_agrees(key: tuple[int, int]) -> None:
    """WAL ingest keeps nothing for a 'none' record and reads the data of a 'metadata'
    one (with none, it fails as malformed); it knows every one of these types."""
    rmid, info = key
    h = RECORD_HANDLING[key]
    ingest = walingest.WalIngest(_ingest_state())
    out: walingest.Values = []
    try:
        ingest.ingest(_record(rmid, info), out)
    except UnsupportedWalRecord as e:
        pytest.fail(f"{record_kind(rmid, info)}: {e}")
    except (struct.error, IndexError, CorruptionError):
        assert h.handling is Handling.METADATA, record_kind(rmid, info)
        return
    if h.handling is Handling.METADATA:
        assert out, record_kind(rmid, info)
    else:
        assert out == [], record_kind(rmid, info)


def test_check_counts_every_record_by_kind() -> None:
    """redo-check's coverage report: records without block references count too."""
    from pagestore.redo.check import CheckStats, check_records

    stats = CheckStats()
    records = [_record(RmgrId.XACT, 0x80), _record(RmgrId.XACT, 0x00),
               _record(RmgrId.STANDBY, 0x00), _record(RmgrId.HEAP, 0x90)]
    assert list(check_records(records, RedoContext(), stats)) == []
    assert stats.records == 4
    assert stats.seen == {"Transaction/COMMIT": 2, "Standby/LOCK": 1,
                          "Heap/UNKNOWN (90)": 1}


def test_docs_table_is_generated() -> None:
    text = (ROOT / "docs" / "redo.md").read_text()
    section = text.split("\n## Every PostgreSQL 15 record\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) + "\n" == markdown_table(), (
        "docs/redo.md is stale: regenerate it with python -m pagestore.pg.recordtypes --markdown")
