"""What pagestore does with every PostgreSQL 15 WAL record type.

Every key of ``pagestore.pg.rmgr.RECORD_TYPES`` gets one ``Handling``:

- ``redo``: its block references are redone by a pagestore redo module.  This is derived,
  not listed: a record of an rmgr in ``pagestore.redo.apply._MODULES`` is redone by that
  module unless ``_NO_PAGE_CHANGE`` says its rmgr's redo changes no page.
- ``metadata``: services/ingest/walingest.py keeps metadata keys from it (the checkpoint,
  relation sizes and directories, the database directory, the CLOG and multixact SLRUs,
  relmaps, two-phase state): read its ``_HANDLERS`` and each handler.
- ``image``: XLOG FPI / FPI_FOR_HINT, which carry nothing but full-page images.
- ``none``: it changes no page and no metadata pagestore keeps; the note says why, from
  the rmgr's C redo function (xlog_redo and xlogrecovery_redo, xact_redo, dbase_redo,
  tblspc_redo, standby_redo, heap_redo, heap2_redo, btree_redo, gist_redo,
  commit_ts_redo, replorigin_redo, logicalmsg_redo in PostgreSQL 15.18), and names the
  file PostgreSQL changes when pagestore does not model it.

``python -m pagestore.pg.recordtypes --markdown`` prints the table that docs/redo.md
carries (tests/unit/test_rmgr_catalog.py checks that the two are equal).
"""

from __future__ import annotations

import argparse
import enum
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore.pg.rmgr import RECORD_TYPES, RmgrId, record_type_key, rmgr_name
from pagestore.redo.apply import _MODULES

if TYPE_CHECKING:
    from collections.abc import Sequence


class Handling(enum.StrEnum):
    REDO = "redo"
    METADATA = "metadata"
    IMAGE = "image"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class RecordHandling:
    handling: Handling
    note: str  # where pagestore handles it, or why it needs nothing


WALINGEST = "services/ingest/walingest.py"

#: The rmgrs a pagestore redo module redoes, and the module of each (apply.py's table).
REDO_MODULES = _MODULES

#: Records of rmgrs with a redo module whose redo changes no page (no block references).
_NO_PAGE_CHANGE: dict[tuple[int, int], str] = {
    (RmgrId.HEAP, 0x30): "heap_redo: a no-op, the truncation itself is logged as Storage "
                         "records; TRUNCATE exists for logical decoding only",
    (RmgrId.HEAP2, 0x00): "heap_xlog_logical_rewrite writes `pg_logical/mappings/map-*` (a "
                          "file only logical decoding reads); pagestore keeps no pg_logical "
                          "files",
    (RmgrId.HEAP2, 0x70): "heap2_redo: nothing to do, logical decoding only",
    (RmgrId.BTREE, 0xD0): "btree_xlog_reuse_page: a hot-standby recovery conflict only",
    (RmgrId.GIST, 0x20): "gistRedoPageReuse: a hot-standby recovery conflict only",
    (RmgrId.GIST, 0x70): "gist_redo: a no-op; it exists to advance the insert LSN "
                         "(gistGetFakeLSN)",
}

#: More to say about some redone records.
_REDO_NOTES: dict[tuple[int, int], str] = {
    (RmgrId.HEAP2, 0x40): "block 0 is the VM page (read zero-on-error), block 1 the heap "
                          "page",
    (RmgrId.HASH, 0x50): "full-page images only; redo fails without one, as PostgreSQL's",
    (RmgrId.GIN, 0x30): "left/right/root pages: full-page images only; redo fails without "
                        "them, as PostgreSQL's",
    (RmgrId.GIN, 0x40): "full-page image only; redo fails without one, as PostgreSQL's",
}
#: The records whose redo clears visibility-map bits without a block reference for the VM
#: page (pagestore/redo/heap.py vm_clears).
_VM_CLEARING: frozenset[tuple[int, int]] = frozenset({
    (RmgrId.HEAP, 0x00), (RmgrId.HEAP, 0x80), (RmgrId.HEAP, 0x10), (RmgrId.HEAP, 0x20),
    (RmgrId.HEAP, 0xA0), (RmgrId.HEAP, 0x40), (RmgrId.HEAP, 0xC0), (RmgrId.HEAP, 0x60),
    (RmgrId.HEAP2, 0x50), (RmgrId.HEAP2, 0xD0), (RmgrId.HEAP2, 0x60),
})
_VM_CLEAR_NOTE = f"VM bits it clears: ClearVmBits values ({WALINGEST})"

_META = Handling.METADATA
_NONE = Handling.NONE
_CLOG_AND_DROPS = ("CLOG status of the xid and its subxacts (ClogSetStatus values), the "
                   "dropped relations' sizes and directory entries, nextXid in the "
                   "checkpoint")
_NOT_MODELLED_AT_ABORT = "; not modelled: a replication origin's progress (pg_logical)"
_NOT_MODELLED_AT_COMMIT = ("; not modelled: commit timestamps (pg_commit_ts) and a "
                           "replication origin's progress (pg_logical)")

#: Records of rmgrs without a redo module.
_OTHER_RMGRS: dict[tuple[int, int], tuple[Handling, str]] = {
    (RmgrId.XLOG, 0x00): (_META, "checkpoint: counters believed exactly, redo := the "
                                 "record's end"),
    (RmgrId.XLOG, 0x10): (_META, "checkpoint: nextXid, nextMulti, oldestXid, oldestMulti "
                                 "advanced"),
    (RmgrId.XLOG, 0x20): (_NONE, "xlog_redo: nothing to do"),
    (RmgrId.XLOG, 0x30): (_META, "checkpoint: nextOid"),
    (RmgrId.XLOG, 0x40): (_NONE, "xlog_redo: nothing to do (the reader skips the rest of "
                                 "the segment)"),
    (RmgrId.XLOG, 0x50): (_NONE, "xlogrecovery_redo: marks where a restored online backup "
                                 "becomes consistent (recovery state only)"),
    (RmgrId.XLOG, 0x60): (_NONE, "xlog_redo copies the settings (max_connections, wal_level, "
                                 "wal_log_hints, track_commit_timestamp, ...) into pg_control; "
                                 "pagestore's stored pg_control keeps the imported settings "
                                 "(not modelled)"),
    (RmgrId.XLOG, 0x70): (_NONE, "xlog_redo: nothing to do (a recovery target name)"),
    (RmgrId.XLOG, 0x80): (_NONE, "xlog_redo: full_page_writes tracked in memory for backups "
                                 "only"),
    (RmgrId.XLOG, 0x90): (_NONE, "xlog_redo: checks the timeline ID only"),
    (RmgrId.XLOG, 0xA0): (Handling.IMAGE, "its full-page images; blocks without one are "
                                          "skipped, as redo does"),
    (RmgrId.XLOG, 0xB0): (Handling.IMAGE, "its full-page images (every block has one)"),
    (RmgrId.XLOG, 0xD0): (_NONE, "xlogrecovery_redo: verifies the overwritten LSN (the "
                                 "reader skips the broken record)"),
    (RmgrId.XACT, 0x00): (_META, _CLOG_AND_DROPS + _NOT_MODELLED_AT_COMMIT),
    (RmgrId.XACT, 0x10): (_META, "two-phase directory and the pg_twophase state file"),
    (RmgrId.XACT, 0x20): (_META, _CLOG_AND_DROPS + _NOT_MODELLED_AT_ABORT),
    (RmgrId.XACT, 0x30): (_META, _CLOG_AND_DROPS + ", the two-phase file removed"
                          + _NOT_MODELLED_AT_COMMIT),
    (RmgrId.XACT, 0x40): (_META, _CLOG_AND_DROPS + ", the two-phase file removed"
                          + _NOT_MODELLED_AT_ABORT),
    (RmgrId.XACT, 0x50): (_NONE, "xact_redo: hot standby's known-assigned xids (memory) "
                                 "only"),
    (RmgrId.XACT, 0x60): (_NONE, "xact_redo ignores it (the commit record carries the "
                                 "invalidations); logical decoding only"),
    (RmgrId.SMGR, 0x10): (_META, "relation size (0) and directory entry"),
    (RmgrId.SMGR, 0x20): (_META, "relation sizes of the main, FSM and VM forks; FsmTruncate "
                                 "and TruncateVm values on their last pages"),
    (RmgrId.CLOG, 0x00): (_META, "a zeroed CLOG page (SLRU directory and segment size)"),
    (RmgrId.CLOG, 0x10): (_META, "the CLOG segments before the cutoff removed"),
    (RmgrId.DBASE, 0x00): (_META, "the source database's relmap, relations, sizes and "
                                  "pages copied (needs a page reader)"),
    (RmgrId.DBASE, 0x10): (_NONE, "dbase_redo creates `base/<db>/` and its PG_VERSION; "
                                  "pagestore's database entry comes from the RelMap UPDATE "
                                  "that follows, and basebackup writes PG_VERSION"),
    (RmgrId.DBASE, 0x20): (_META, "the database's relations, sizes, relmap and directory "
                                  "entry removed"),
    (RmgrId.TBLSPC, 0x00): (_NONE, "tblspc_redo creates the tablespace directory and its "
                                   "pg_tblspc symlink; pagestore keeps no tablespace "
                                   "directories (not modelled: basebackup serves only "
                                   "pg_default and pg_global)"),
    (RmgrId.TBLSPC, 0x10): (_NONE, "tblspc_redo removes the (empty) tablespace directories; "
                                   "pagestore keeps none"),
    (RmgrId.MULTIXACT, 0x00): (_META, "a zeroed multixact offsets page"),
    (RmgrId.MULTIXACT, 0x10): (_META, "a zeroed multixact members page"),
    (RmgrId.MULTIXACT, 0x20): (_META, "offsets and members written (SLRU values), "
                                      "nextMulti/offset in the checkpoint"),
    (RmgrId.MULTIXACT, 0x30): (_META, "offsets and members segments removed, oldestMulti in "
                                      "the checkpoint"),
    (RmgrId.RELMAP, 0x00): (_META, "the database's relmap (pg_filenode.map) and directory "
                                   "entry"),
    (RmgrId.STANDBY, 0x00): (_NONE, "standby_redo: AccessExclusiveLocks for hot-standby "
                                    "queries (memory)"),
    (RmgrId.STANDBY, 0x10): (_META, "oldestActiveXid in the checkpoint (PostgreSQL keeps "
                                    "the running xacts in memory)"),
    (RmgrId.STANDBY, 0x20): (_NONE, "standby_redo: cache invalidations for hot-standby "
                                    "backends (may unlink pg_internal.init, a cache "
                                    "PostgreSQL rebuilds; pagestore keeps none)"),
    (RmgrId.COMMIT_TS, 0x00): (_NONE, "commit_ts_redo zeroes a pg_commit_ts page; pagestore "
                                      "keeps no pg_commit_ts (not modelled)"),
    (RmgrId.COMMIT_TS, 0x10): (_NONE, "commit_ts_redo removes pg_commit_ts segments; "
                                      "pagestore keeps no pg_commit_ts (not modelled)"),
    (RmgrId.REPLORIGIN, 0x00): (_NONE, "replorigin_redo advances an origin in memory, saved "
                                       "to pg_logical/replorigin_checkpoint at checkpoints; "
                                       "pagestore keeps no pg_logical files (not modelled)"),
    (RmgrId.REPLORIGIN, 0x10): (_NONE, "replorigin_redo resets an origin in memory (same "
                                       "file as SET; not modelled)"),
    (RmgrId.LOGICALMSG, 0x00): (_NONE, "logicalmsg_redo: nothing to do, logical decoding "
                                       "only"),
}


def _module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _build() -> dict[tuple[int, int], RecordHandling]:
    out: dict[tuple[int, int], RecordHandling] = {}
    for key in RECORD_TYPES:
        rmid = key[0]
        if key in _NO_PAGE_CHANGE:
            out[key] = RecordHandling(Handling.NONE, _NO_PAGE_CHANGE[key])
        elif rmid in REDO_MODULES:
            notes = [_module_path(REDO_MODULES[RmgrId(rmid)])]
            if key in _REDO_NOTES:
                notes.append(_REDO_NOTES[key])
            if key in _VM_CLEARING:
                notes.append(_VM_CLEAR_NOTE)
            out[key] = RecordHandling(Handling.REDO, "; ".join(notes))
        else:
            handling, note = _OTHER_RMGRS[key]
            out[key] = RecordHandling(handling, note)
    return out


#: (rmgr id, masked rmgr info), as ``RECORD_TYPES`` -> what pagestore does with it.
RECORD_HANDLING: dict[tuple[int, int], RecordHandling] = _build()


def record_handling(rmid: int, rmgr_info: int) -> RecordHandling | None:
    """What pagestore does with a record of this rmgr and ``info & 0xF0`` (None: a type
    PostgreSQL 15 does not have)."""
    return RECORD_HANDLING.get(record_type_key(rmid, rmgr_info))


def markdown_table() -> str:
    """The docs/redo.md table: one row per record type, in (rmgr id, info) order."""
    lines = ["| rmgr | record | info | pagestore | where / why |", "|---|---|---|---|---|"]
    for (rmid, info), h in sorted(RECORD_HANDLING.items()):
        lines.append(f"| {rmgr_name(rmid)} | {RECORD_TYPES[rmid, info]} | {info:#04x} | "
                     f"{h.handling} | {h.note} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagestore.pg.recordtypes",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--markdown", action="store_true", required=True,
                        help="print the table docs/redo.md carries")
    parser.parse_args(argv)
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
