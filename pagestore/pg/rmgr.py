"""PostgreSQL 15 resource manager ids, their names, and the name of every record type.

Rmgr names come from src/include/access/rmgrlist.h; record type names from the
``*_identify`` functions of src/backend/access/rmgrdesc/*desc.c and the XLOG_* constants
of the headers those include (pg_control.h, xact.h, storage_xlog.h, clog.h,
dbcommands_xlog.h, tablespace.h, multixact.h, relmapper.h, standbydefs.h, heapam_xlog.h,
nbtxlog.h, hash_xlog.h, ginxlog.h, gistxlog.h, sequence.h, spgxlog.h, brin_xlog.h,
commit_ts.h, origin.h, message.h).  All names are exactly what pg_waldump prints
(``pg_waldump --stats=record`` prints ``<rmgr>/<record type>``); custom rmgrs (ids
128..255) print as ``custom###`` with no known record types, as pg_waldump does when the
module is not loaded.

Record type keys.  ``RECORD_TYPES`` is keyed by (rmgr id, rmgr info) where rmgr info is
``xl_info & ~XLR_INFO_MASK`` (``info & 0xF0``, ``DecodedRecord.rmgr_info``) further masked
the way the rmgr's identify function masks it (``record_type_mask``):

- Transaction: ``info & XLOG_XACT_OPMASK`` (0x70); the XLOG_XACT_HAS_INFO bit (0x80) says
  the record carries an xinfo field and is not part of the type, so a commit is
  (XACT, 0x00) whether logged as 0x00 or 0x80;
- Generic: generic_identify names every record "Generic"; the key is (GENERIC, 0x00);
- every other rmgr: all four rmgr bits, so Heap's XLOG_HEAP_INIT_PAGE (0x80) combinations,
  Heap2 MULTI_INSERT+INIT (0xD0) and BRIN's XLOG_BRIN_INIT_PAGE (0x80) combinations are
  keys of their own, as the identify functions list them.

``record_type_name`` applies that mask and looks up; a combination no identify function
names is ``UNKNOWN (<rmgr info in hex>)``, pg_waldump's spelling.  ``record_kind`` is the
``<rmgr>/<record type>`` name reports use, e.g. ``Heap/INSERT+INIT``.  (CommitTs and
ReplicationOrigin's identify functions switch on the unmasked xl_info; PostgreSQL sets no
XLR_INFO_MASK bit on their records, so masking changes nothing there.)
"""

from __future__ import annotations

import enum


class RmgrId(enum.IntEnum):
    XLOG = 0
    XACT = 1
    SMGR = 2
    CLOG = 3
    DBASE = 4
    TBLSPC = 5
    MULTIXACT = 6
    RELMAP = 7
    STANDBY = 8
    HEAP2 = 9
    HEAP = 10
    BTREE = 11
    HASH = 12
    GIN = 13
    GIST = 14
    SEQ = 15
    SPGIST = 16
    BRIN = 17
    COMMIT_TS = 18
    REPLORIGIN = 19
    GENERIC = 20
    LOGICALMSG = 21


RMGR_NAMES = (
    "XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace", "MultiXact", "RelMap",
    "Standby", "Heap2", "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence", "SPGist", "BRIN",
    "CommitTs", "ReplicationOrigin", "Generic", "LogicalMessage",
)
RM_MAX_BUILTIN_ID = len(RMGR_NAMES) - 1
RM_MIN_CUSTOM_ID = 128


def rmgr_name(rmid: int) -> str:
    if 0 <= rmid <= RM_MAX_BUILTIN_ID:
        return RMGR_NAMES[rmid]
    if rmid >= RM_MIN_CUSTOM_ID:
        return f"custom{rmid:03d}"
    return f"unknown{rmid}"


XLR_RMGR_INFO_MASK = 0xF0  # ~XLR_INFO_MASK: the bits of xl_info that belong to the rmgr
XLOG_XACT_OPMASK = 0x70    # xact.h: xact_identify looks at these bits only
GENERIC_TYPE_MASK = 0x00   # generic_identify names every info "Generic"

#: The bits of rmgr info each rmgr's identify function looks at (default: all of them).
RECORD_TYPE_MASKS: dict[int, int] = {
    RmgrId.XACT: XLOG_XACT_OPMASK,
    RmgrId.GENERIC: GENERIC_TYPE_MASK,
}

_TYPE_NAMES_BY_RMGR: dict[RmgrId, dict[int, str]] = {
    RmgrId.XLOG: {  # pg_control.h; 0xC0 was XLOG_FPI_MULTI in 9.5..11, unused since
        0x00: "CHECKPOINT_SHUTDOWN", 0x10: "CHECKPOINT_ONLINE", 0x20: "NOOP", 0x30: "NEXTOID",
        0x40: "SWITCH", 0x50: "BACKUP_END", 0x60: "PARAMETER_CHANGE", 0x70: "RESTORE_POINT",
        0x80: "FPW_CHANGE", 0x90: "END_OF_RECOVERY", 0xA0: "FPI_FOR_HINT", 0xB0: "FPI",
        0xD0: "OVERWRITE_CONTRECORD",
    },
    RmgrId.XACT: {  # xact.h, info & XLOG_XACT_OPMASK; INVALIDATIONS prints singular
        0x00: "COMMIT", 0x10: "PREPARE", 0x20: "ABORT", 0x30: "COMMIT_PREPARED",
        0x40: "ABORT_PREPARED", 0x50: "ASSIGNMENT", 0x60: "INVALIDATION",
    },
    RmgrId.SMGR: {0x10: "CREATE", 0x20: "TRUNCATE"},  # storage_xlog.h
    RmgrId.CLOG: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},  # clog.h
    RmgrId.DBASE: {0x00: "CREATE_FILE_COPY", 0x10: "CREATE_WAL_LOG", 0x20: "DROP"},
    RmgrId.TBLSPC: {0x00: "CREATE", 0x10: "DROP"},  # tablespace.h
    RmgrId.MULTIXACT: {  # multixact.h
        0x00: "ZERO_OFF_PAGE", 0x10: "ZERO_MEM_PAGE", 0x20: "CREATE_ID", 0x30: "TRUNCATE_ID",
    },
    RmgrId.RELMAP: {0x00: "UPDATE"},  # relmapper.h
    RmgrId.STANDBY: {0x00: "LOCK", 0x10: "RUNNING_XACTS", 0x20: "INVALIDATIONS"},
    RmgrId.HEAP2: {  # heapam_xlog.h; 0x80 is XLOG_HEAP_INIT_PAGE
        0x00: "REWRITE", 0x10: "PRUNE", 0x20: "VACUUM", 0x30: "FREEZE_PAGE", 0x40: "VISIBLE",
        0x50: "MULTI_INSERT", 0xD0: "MULTI_INSERT+INIT", 0x60: "LOCK_UPDATED",
        0x70: "NEW_CID",
    },
    RmgrId.HEAP: {  # heapam_xlog.h; 0x80 is XLOG_HEAP_INIT_PAGE
        0x00: "INSERT", 0x80: "INSERT+INIT", 0x10: "DELETE", 0x20: "UPDATE",
        0xA0: "UPDATE+INIT", 0x30: "TRUNCATE", 0x40: "HOT_UPDATE", 0xC0: "HOT_UPDATE+INIT",
        0x50: "HEAP_CONFIRM", 0x60: "LOCK", 0x70: "INPLACE",
    },
    RmgrId.BTREE: {  # nbtxlog.h
        0x00: "INSERT_LEAF", 0x10: "INSERT_UPPER", 0x20: "INSERT_META", 0x30: "SPLIT_L",
        0x40: "SPLIT_R", 0x50: "INSERT_POST", 0x60: "DEDUP", 0x70: "DELETE",
        0x80: "UNLINK_PAGE", 0x90: "UNLINK_PAGE_META", 0xA0: "NEWROOT",
        0xB0: "MARK_PAGE_HALFDEAD", 0xC0: "VACUUM", 0xD0: "REUSE_PAGE", 0xE0: "META_CLEANUP",
    },
    RmgrId.HASH: {  # hash_xlog.h
        0x00: "INIT_META_PAGE", 0x10: "INIT_BITMAP_PAGE", 0x20: "INSERT",
        0x30: "ADD_OVFL_PAGE", 0x40: "SPLIT_ALLOCATE_PAGE", 0x50: "SPLIT_PAGE",
        0x60: "SPLIT_COMPLETE", 0x70: "MOVE_PAGE_CONTENTS", 0x80: "SQUEEZE_PAGE",
        0x90: "DELETE", 0xA0: "SPLIT_CLEANUP", 0xB0: "UPDATE_META_PAGE",
        0xC0: "VACUUM_ONE_PAGE",
    },
    RmgrId.GIN: {  # ginxlog.h
        0x10: "CREATE_PTREE", 0x20: "INSERT", 0x30: "SPLIT", 0x40: "VACUUM_PAGE",
        0x50: "DELETE_PAGE", 0x60: "UPDATE_META_PAGE", 0x70: "INSERT_LISTPAGE",
        0x80: "DELETE_LISTPAGE", 0x90: "VACUUM_DATA_LEAF_PAGE",
    },
    RmgrId.GIST: {  # gistxlog.h
        0x00: "PAGE_UPDATE", 0x10: "DELETE", 0x20: "PAGE_REUSE", 0x30: "PAGE_SPLIT",
        0x60: "PAGE_DELETE", 0x70: "ASSIGN_LSN",
    },
    RmgrId.SEQ: {0x00: "LOG"},  # sequence.h
    RmgrId.SPGIST: {  # spgxlog.h (0x00 was CREATE_INDEX, no longer used)
        0x10: "ADD_LEAF", 0x20: "MOVE_LEAFS", 0x30: "ADD_NODE", 0x40: "SPLIT_TUPLE",
        0x50: "PICKSPLIT", 0x60: "VACUUM_LEAF", 0x70: "VACUUM_ROOT", 0x80: "VACUUM_REDIRECT",
    },
    RmgrId.BRIN: {  # brin_xlog.h; 0x80 is XLOG_BRIN_INIT_PAGE
        0x00: "CREATE_INDEX", 0x10: "INSERT", 0x90: "INSERT+INIT", 0x20: "UPDATE",
        0xA0: "UPDATE+INIT", 0x30: "SAMEPAGE_UPDATE", 0x40: "REVMAP_EXTEND",
        0x50: "DESUMMARIZE",
    },
    RmgrId.COMMIT_TS: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},  # commit_ts.h
    RmgrId.REPLORIGIN: {0x00: "SET", 0x10: "DROP"},  # replication/origin.h
    RmgrId.GENERIC: {0x00: "Generic"},
    RmgrId.LOGICALMSG: {0x00: "MESSAGE"},  # replication/message.h
}

#: (rmgr id, masked rmgr info) -> the record type name pg_waldump prints (see above).
RECORD_TYPES: dict[tuple[int, int], str] = {
    (rmid, info): name
    for rmid, names in _TYPE_NAMES_BY_RMGR.items()
    for info, name in sorted(names.items())
}


def record_type_mask(rmid: int) -> int:
    """The bits of rmgr info that select the record type of rmgr ``rmid``."""
    return RECORD_TYPE_MASKS.get(rmid, XLR_RMGR_INFO_MASK)


def record_type_key(rmid: int, rmgr_info: int) -> tuple[int, int]:
    """The ``RECORD_TYPES`` key of a record with this rmgr id and ``info & 0xF0``."""
    return rmid, rmgr_info & record_type_mask(rmid)


def record_type_name(rmid: int, rmgr_info: int) -> str:
    """The record type as pg_waldump names it: 'INSERT+INIT', 'COMMIT', ...; for a
    combination no identify function names, 'UNKNOWN (<rmgr_info in hex>)'."""
    name = RECORD_TYPES.get(record_type_key(rmid, rmgr_info))
    return name if name is not None else f"UNKNOWN ({rmgr_info & XLR_RMGR_INFO_MASK:x})"


def record_kind(rmid: int, rmgr_info: int) -> str:
    """'<rmgr>/<record type>' as ``pg_waldump --stats=record`` prints it: 'Heap/INSERT'."""
    return f"{rmgr_name(rmid)}/{record_type_name(rmid, rmgr_info)}"


#: Every record kind of the built-in rmgrs, in (rmgr id, info) order.
ALL_RECORD_KINDS: tuple[str, ...] = tuple(
    f"{rmgr_name(rmid)}/{name}" for (rmid, _info), name in sorted(RECORD_TYPES.items()))
