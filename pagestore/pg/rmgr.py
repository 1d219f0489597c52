"""PostgreSQL 15 resource manager ids and their names (src/include/access/rmgrlist.h).

Names are exactly what pg_waldump prints; custom rmgrs (ids 128..255) print as
``custom###``, as pg_waldump does when the module is not loaded.
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
