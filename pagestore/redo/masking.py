"""wal_consistency_checking's page masking, as PostgreSQL 15 applies it.

Mirrors src/backend/access/common/bufmask.c (mask_page_lsn_and_checksum,
mask_page_hint_bits, mask_unused_space, mask_lp_flags, mask_page_content; MASK_MARKER
is 0) and every rm_mask of src/include/access/rmgrlist.h: heap_mask (heapam.c, for both
Heap and Heap2), btree_mask (nbtxlog.c), hash_mask (hash_xlog.c), gin_mask (ginxlog.c),
gist_mask (gistxlog.c), seq_mask (sequence.c), spg_mask (spgxlog.c), brin_mask
(brin_xlog.c) and generic_mask (generic_xlog.c).

How PostgreSQL uses them (verifyBackupPageConsistency in xlogrecovery.c): after redo of
a record carrying XLR_CHECK_CONSISTENCY, for every block reference whose image is *not*
BKPIMAGE_APPLY, it copies the replayed page (skipping blocks that do not exist and pages
whose LSN is already past the record's EndRecPtr), restores the image, applies the
*record's* rmgr's ``rm_mask(page, blkno)`` to both copies and memcmps all 8192 bytes.
Consequences:

- The mask is chosen by the record's rmgr, never by the page or its fork: the
  visibility map page of a Heap2 VISIBLE record goes through heap_mask.
- pd_lsn and pd_checksum are masked inside each rm_mask (all nine call
  mask_page_lsn_and_checksum first); the driver masks nothing itself.
- Only rmgrs with an rm_mask are ever checked: the wal_consistency_checking GUC accepts
  only their names, and "all" expands to exactly them (check_wal_consistency_checking in
  guc.c), so XLOG, Transaction, Storage, CLOG, Database, Tablespace, MultiXact, RelMap,
  Standby, CommitTs, ReplicationOrigin and LogicalMessage records never carry
  XLR_CHECK_CONSISTENCY from the GUC.  Were one to carry it (a caller may pass the bit to
  XLogInsert; no core caller does), the driver would compare the raw, unmasked pages;
  ``mask_page`` returns such pages unchanged for that reason.

Rules kept here:

- The in-place functions take a ``bytearray`` of exactly BLCKSZ bytes and change only the
  bytes PostgreSQL changes; they keep PostgreSQL's ``(page, blkno)`` signature even where
  ``blkno`` is unused.  ``mask_page`` and ``mask_vm_page_strict`` return a masked copy.
- A page whose pointers PostgreSQL would reject (mask_unused_space's "invalid page"
  check) raises CorruptionError with PostgreSQL's message.  Where PostgreSQL would read or
  write outside the page without checking (a special area or a tuple running past BLCKSZ,
  undefined behaviour in C), we raise CorruptionError too, never write out of bounds.
  A page of the wrong length is a caller bug: ValueError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pagestore.errors import CorruptionError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ, ForkNumber
from pagestore.pg.rmgr import RM_MAX_BUILTIN_ID, RmgrId, rmgr_name
from pagestore.redo.brin import (
    BRIN_EVACUATE_PAGE,
    BRIN_FLAGS_OFF,
    BRIN_PAGETYPE_META,
    BRIN_PAGETYPE_REGULAR,
    BRIN_SPECIAL_SPACE,
    BRIN_TYPE_OFF,
)
from pagestore.redo.bufpage import (
    FIRST_OFFSET_NUMBER,
    ITEM_ID_SIZE,
    ITEM_POINTER,
    LP_NORMAL,
    LSN,
    PAGE_HEADER,
    PD_ALL_VISIBLE,
    PD_CHECKSUM_OFF,
    PD_FLAGS_OFF,
    PD_HAS_FREE_LINES,
    PD_LOWER_OFF,
    PD_LSN_OFF,
    PD_PAGE_FULL,
    PD_PRUNE_XID_OFF,
    PD_SPECIAL_OFF,
    PD_UPPER_OFF,
    SIZE_OF_PAGE_HEADER,
    U16,
    U32,
)
from pagestore.redo.gin import GIN_DELETED, GIN_FLAGS_OFF
from pagestore.redo.gin import GIN_OPAQUE as GIN_PAGE_OPAQUE
from pagestore.redo.gist import F_FOLLOW_RIGHT, F_HAS_GARBAGE, F_LEAF, GIST_FLAGS_OFF, GIST_NSN_OFF
from pagestore.redo.gist import GIST_OPAQUE as GIST_PAGE_OPAQUE
from pagestore.redo.hash import (
    HASH_PAGE_OPAQUE,
    HASHO_FLAG_OFF,
    LH_BUCKET_PAGE,
    LH_OVERFLOW_PAGE,
    LH_PAGE_HAS_DEAD_TUPLES,
    LH_PAGE_TYPE,
    LH_UNUSED_PAGE,
)
from pagestore.redo.hash import LH_BITMAP_PAGE as LH_BITMAP_PAGE

MASK_MARKER = 0

# The page header layout is bufpage.py's (one definition): PageHeaderData, its field
# offsets and flag bits.
SIZE_OF_PAGE_HEADER_DATA = SIZE_OF_PAGE_HEADER  # 24

PAGE_XLOG_REC_PTR = LSN  # PageXLogRecPtr: xlogid u32, xrecoff u32 (pd_lsn, GiST's nsn)

# ItemIdData: one u32 bitfield, low bits first on x86-64/aarch64 gcc:
# lp_off:15 (bits 0-14), lp_flags:2 (bits 15-16), lp_len:15 (bits 17-31)
ITEM_ID = U32
LP_FLAGS_SHIFT = 15
LP_FLAGS_BITS = 0x3 << LP_FLAGS_SHIFT

# HeapTupleHeaderData: t_xmin u32, t_xmax u32, t_cid/t_xvac u32, t_ctid (bi_hi u16,
# bi_lo u16, ip_posid u16), t_infomask2 u16, t_infomask u16, t_hoff u8; t_bits follow
HEAP_TUPLE_HEADER = struct.Struct("<IIIHHHHHB")
SIZEOF_HEAP_TUPLE_HEADER = HEAP_TUPLE_HEADER.size  # 23
T_CID_OFF = 8
T_CTID_OFF = 12
T_INFOMASK_OFF = 20
# ItemPointerData: ip_blkid.bi_hi u16, ip_blkid.bi_lo u16, ip_posid u16

HEAP_XMIN_COMMITTED = 0x0100
HEAP_XMIN_INVALID = 0x0200
HEAP_XMIN_FROZEN = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID
HEAP_XMAX_COMMITTED = 0x0400
HEAP_XMAX_INVALID = 0x0800
HEAP_XACT_MASK = 0xFFF0
SPEC_TOKEN_OFFSET_NUMBER = 0xFFFE

# BTPageOpaqueData: btpo_prev u32, btpo_next u32, btpo_level u32, btpo_flags u16,
# btpo_cycleid u16
BT_PAGE_OPAQUE = struct.Struct("<IIIHH")
BTPO_FLAGS_OFF = 12
BTPO_CYCLEID_OFF = 14
BTP_LEAF = 1 << 0
BTP_DELETED = 1 << 2
BTP_SPLIT_END = 1 << 5
BTP_HAS_GARBAGE = 1 << 6

MaskFunction = Callable[[bytearray, int], None]


def _check_page(page: bytearray) -> None:
    if len(page) != BLCKSZ:
        raise ValueError(f"a page is {BLCKSZ} bytes, got {len(page)}")


def _u16(page: bytearray, off: int) -> int:
    return int(U16.unpack_from(page, off)[0])


def _page_get_max_offset_number(page: bytearray) -> int:
    """PageGetMaxOffsetNumber: 0 if pd_lower <= 24, else (pd_lower - 24) / 4."""
    lower = _u16(page, PD_LOWER_OFF)
    if lower <= SIZE_OF_PAGE_HEADER_DATA:
        return 0
    return (lower - SIZE_OF_PAGE_HEADER_DATA) // ITEM_ID_SIZE


def _item_id_off(offnum: int) -> int:
    return SIZE_OF_PAGE_HEADER_DATA + (offnum - 1) * ITEM_ID_SIZE


def _special(page: bytearray, size: int, what: str) -> int:
    """PageGetSpecialPointer, refusing a special area that does not fit in the page."""
    special = _u16(page, PD_SPECIAL_OFF)
    if special + size > BLCKSZ:
        raise CorruptionError(f"{what} page: pd_special {special} leaves no room for its "
                              f"{size}-byte special area")
    return special


def _and_u16(page: bytearray, off: int, mask: int) -> None:
    U16.pack_into(page, off, _u16(page, off) & mask)


# --------------------------------------------------------------------------- bufmask.c

def mask_page_lsn_and_checksum(page: bytearray) -> None:
    """pd_lsn (both words) and pd_checksum := MASK_MARKER."""
    _check_page(page)
    PAGE_XLOG_REC_PTR.pack_into(page, PD_LSN_OFF, MASK_MARKER, MASK_MARKER)
    U16.pack_into(page, PD_CHECKSUM_OFF, MASK_MARKER)


def mask_page_hint_bits(page: bytearray) -> None:
    """pd_prune_xid := MASK_MARKER; clear PD_PAGE_FULL, PD_HAS_FREE_LINES, PD_ALL_VISIBLE."""
    _check_page(page)
    U32.pack_into(page, PD_PRUNE_XID_OFF, MASK_MARKER)
    _and_u16(page, PD_FLAGS_OFF, ~(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE))


def mask_unused_space(page: bytearray) -> None:
    """Zero [pd_lower, pd_upper); PostgreSQL's sanity check first (CorruptionError)."""
    _check_page(page)
    _lsn_hi, _lsn_lo, _ck, _flags, lower, upper, special, _ver, _prune = \
        PAGE_HEADER.unpack_from(page)
    if (lower > upper or special < upper or lower < SIZE_OF_PAGE_HEADER_DATA
            or special > BLCKSZ):
        raise CorruptionError(
            f"invalid page pd_lower {lower} pd_upper {upper} pd_special {special}")
    page[lower:upper] = bytes(upper - lower)


def mask_lp_flags(page: bytearray) -> None:
    """lp_flags := LP_UNUSED for every used line pointer 1..MaxOffset (off, len kept)."""
    _check_page(page)
    maxoff = _page_get_max_offset_number(page)
    if _item_id_off(maxoff + 1) > BLCKSZ:
        raise CorruptionError(f"line pointer array of {maxoff} items runs past the page")
    if maxoff:
        fmt = f"<{maxoff}I"
        words = struct.unpack_from(fmt, page, SIZE_OF_PAGE_HEADER_DATA)
        # Clearing the flags of an unused pointer changes nothing, so clear them all.
        struct.pack_into(fmt, page, SIZE_OF_PAGE_HEADER_DATA,
                         *[w & ~LP_FLAGS_BITS for w in words])


def mask_page_content(page: bytearray) -> None:
    """Zero everything after the header, and pd_lower and pd_upper."""
    _check_page(page)
    page[SIZE_OF_PAGE_HEADER_DATA:] = bytes(BLCKSZ - SIZE_OF_PAGE_HEADER_DATA)
    U16.pack_into(page, PD_LOWER_OFF, MASK_MARKER)
    U16.pack_into(page, PD_UPPER_OFF, MASK_MARKER)


# --------------------------------------------------------------------------- rm_mask

def heap_mask(page: bytearray, blkno: int) -> None:
    """heap_mask (heapam.c), the rm_mask of Heap and Heap2.

    Beyond LSN, checksum, page hint bits and the hole, for each line pointer 1..MaxOffset:

    - LP_NORMAL: if xmin is not frozen (t_infomask lacks either of XMIN_COMMITTED and
      XMIN_INVALID), clear *all* of HEAP_XACT_MASK (0xFFF0: hint bits, but also the lock
      bits, COMBOCID, XMAX_IS_MULTI, UPDATED and MOVED), keeping only HASNULL,
      HASVARWIDTH, HASEXTERNAL and HASOID_OLD; if frozen, clear only XMAX_INVALID and
      XMAX_COMMITTED.  t_cid := 0.  A speculative tuple (ip_posid = SpecTokenOffsetNumber)
      gets t_ctid := (blkno, offnum).  t_infomask2, t_xmin, t_xmax and t_hoff stay.
    - any flag, lp_len > 0: zero the MAXALIGN padding [off + len, off + MAXALIGN(len)).
    """
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    mask_unused_space(page)

    # The loop leaves the page header alone, so MaxOffsetNumber is the same each time.
    maxoff = _page_get_max_offset_number(page)
    if _item_id_off(maxoff + 1) > BLCKSZ:
        raise CorruptionError(f"line pointer array of {maxoff} items runs past the page")
    words = struct.unpack_from(f"<{maxoff}I", page, SIZE_OF_PAGE_HEADER_DATA) if maxoff else ()
    u16_unpack, u16_pack, u32_pack = U16.unpack_from, U16.pack_into, U32.pack_into
    for off, word in enumerate(words, FIRST_OFFSET_NUMBER):
        lp_off = word & 0x7FFF
        lp_flags = (word >> LP_FLAGS_SHIFT) & 0x3
        lp_len = word >> 17
        if lp_flags == LP_NORMAL:
            if lp_off + SIZEOF_HEAP_TUPLE_HEADER > BLCKSZ:
                raise CorruptionError(
                    f"heap tuple header at offset {lp_off} (item {off}) runs past the page")
            at = lp_off + T_INFOMASK_OFF
            infomask = u16_unpack(page, at)[0]
            if infomask & HEAP_XMIN_FROZEN != HEAP_XMIN_FROZEN:
                infomask &= ~HEAP_XACT_MASK
            else:
                infomask &= ~(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED)
            u16_pack(page, at, infomask)
            u32_pack(page, lp_off + T_CID_OFF, MASK_MARKER)
            if u16_unpack(page, lp_off + T_CTID_OFF + 4)[0] == SPEC_TOKEN_OFFSET_NUMBER:
                # HeapTupleHeaderIsSpeculative
                ITEM_POINTER.pack_into(page, lp_off + T_CTID_OFF,
                                       (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, off)
        if lp_len != 0:  # ItemIdHasStorage
            end = lp_off + ((lp_len + 7) & ~7)
            if end > BLCKSZ:
                raise CorruptionError(
                    f"item {off} at offset {lp_off} length {lp_len} runs past the page")
            pad = end - lp_off - lp_len
            if pad:
                page[lp_off + lp_len:end] = bytes(pad)


def btree_mask(page: bytearray, blkno: int) -> None:
    """btree_mask (nbtxlog.c): LSN, checksum, page hint bits, hole; lp_flags on leaf
    pages (BTP_LEAF, deleted leaves included); clear BTP_HAS_GARBAGE and BTP_SPLIT_END;
    btpo_cycleid := 0.

    PostgreSQL 15 has no special case for deleted pages (PG 10-13 applied
    mask_page_content to them): a deleted page has pd_lower = 32 and pd_upper =
    pd_special, so the hole hides its stale tuples while the 8-byte safexid at offset 24
    is compared.  On a deleted *leaf* page mask_lp_flags reads that safexid as two line
    pointers and clears bits 15-16 of its low and high u32 words.
    """
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    mask_unused_space(page)

    special = _special(page, BT_PAGE_OPAQUE.size, "btree")
    if _u16(page, special + BTPO_FLAGS_OFF) & BTP_LEAF:
        mask_lp_flags(page)
    _and_u16(page, special + BTPO_FLAGS_OFF, ~(BTP_HAS_GARBAGE | BTP_SPLIT_END))
    U16.pack_into(page, special + BTPO_CYCLEID_OFF, 0)


def hash_mask(page: bytearray, blkno: int) -> None:
    """hash_mask (hash_xlog.c): LSN, checksum, page hint bits, hole; an LH_UNUSED_PAGE
    gets mask_page_content, bucket and overflow pages mask_lp_flags; clear
    LH_PAGE_HAS_DEAD_TUPLES."""
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    mask_unused_space(page)

    special = _special(page, HASH_PAGE_OPAQUE.size, "hash")
    pagetype = _u16(page, special + HASHO_FLAG_OFF) & LH_PAGE_TYPE
    if pagetype == LH_UNUSED_PAGE:
        mask_page_content(page)
    elif pagetype in (LH_BUCKET_PAGE, LH_OVERFLOW_PAGE):
        mask_lp_flags(page)
    _and_u16(page, special + HASHO_FLAG_OFF, ~LH_PAGE_HAS_DEAD_TUPLES)


def gin_mask(page: bytearray, blkno: int) -> None:
    """gin_mask (ginxlog.c): LSN, checksum, page hint bits; a GIN_DELETED page gets
    mask_page_content, any other page mask_unused_space only if pd_lower > 24."""
    mask_page_lsn_and_checksum(page)
    special = _special(page, GIN_PAGE_OPAQUE.size, "gin")
    mask_page_hint_bits(page)
    if _u16(page, special + GIN_FLAGS_OFF) & GIN_DELETED:
        mask_page_content(page)
    elif _u16(page, PD_LOWER_OFF) > SIZE_OF_PAGE_HEADER_DATA:
        mask_unused_space(page)


def gist_mask(page: bytearray, blkno: int) -> None:
    """gist_mask (gistxlog.c): LSN, checksum, page hint bits, hole; nsn := 0; *set*
    F_FOLLOW_RIGHT (GistMarkFollowRight); lp_flags on leaf pages; clear F_HAS_GARBAGE."""
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    mask_unused_space(page)

    special = _special(page, GIST_PAGE_OPAQUE.size, "gist")
    PAGE_XLOG_REC_PTR.pack_into(page, special + GIST_NSN_OFF, MASK_MARKER, MASK_MARKER)
    U16.pack_into(page, special + GIST_FLAGS_OFF,
                  _u16(page, special + GIST_FLAGS_OFF) | F_FOLLOW_RIGHT)
    if _u16(page, special + GIST_FLAGS_OFF) & F_LEAF:
        mask_lp_flags(page)
    _and_u16(page, special + GIST_FLAGS_OFF, ~F_HAS_GARBAGE)


def seq_mask(page: bytearray, blkno: int) -> None:
    """seq_mask (sequence.c): LSN, checksum and the hole only.  No hint-bit masking at
    all: pd_prune_xid, pd_flags and the sequence tuple's t_infomask are compared."""
    mask_page_lsn_and_checksum(page)
    mask_unused_space(page)


def spg_mask(page: bytearray, blkno: int) -> None:
    """spg_mask (spgxlog.c): LSN, checksum, page hint bits; the hole only if
    pd_lower >= 24."""
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    if _u16(page, PD_LOWER_OFF) >= SIZE_OF_PAGE_HEADER_DATA:
        mask_unused_space(page)


def brin_mask(page: bytearray, blkno: int) -> None:
    """brin_mask (brin_xlog.c): LSN, checksum, page hint bits; the hole on regular pages
    and on meta pages with pd_lower > 24 (never on revmap pages); clear
    BRIN_EVACUATE_PAGE."""
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)

    special = _special(page, BRIN_SPECIAL_SPACE.size, "brin")
    pagetype = _u16(page, special + BRIN_TYPE_OFF)
    if pagetype == BRIN_PAGETYPE_REGULAR or (
            pagetype == BRIN_PAGETYPE_META
            and _u16(page, PD_LOWER_OFF) > SIZE_OF_PAGE_HEADER_DATA):
        mask_unused_space(page)
    _and_u16(page, special + BRIN_FLAGS_OFF, ~BRIN_EVACUATE_PAGE)


def generic_mask(page: bytearray, blkno: int) -> None:
    """generic_mask (generic_xlog.c): LSN, checksum and the hole only."""
    mask_page_lsn_and_checksum(page)
    mask_unused_space(page)


#: rm_mask of each built-in rmgr (rmgrlist.h); the others have none.
RM_MASK: dict[RmgrId, MaskFunction] = {
    RmgrId.HEAP2: heap_mask,
    RmgrId.HEAP: heap_mask,
    RmgrId.BTREE: btree_mask,
    RmgrId.HASH: hash_mask,
    RmgrId.GIN: gin_mask,
    RmgrId.GIST: gist_mask,
    RmgrId.SEQ: seq_mask,
    RmgrId.SPGIST: spg_mask,
    RmgrId.BRIN: brin_mask,
    RmgrId.GENERIC: generic_mask,
}

#: The rmgrs wal_consistency_checking can enable ("all" = these), i.e. those with rm_mask.
CONSISTENCY_CHECKED_RMGRS = frozenset(RM_MASK)


def rm_mask(rmid: int) -> MaskFunction | None:
    """The rm_mask of a built-in rmgr, or None if it has none.  Custom rmgrs (128..255)
    and unassigned ids raise UnsupportedWalRecord: their mask is not known here."""
    if not 0 <= rmid <= RM_MAX_BUILTIN_ID:
        raise UnsupportedWalRecord(f"no page mask known for resource manager {rmgr_name(rmid)}")
    return RM_MASK.get(RmgrId(rmid))


def mask_page(rmid: int, page: bytes | bytearray, forknum: int = ForkNumber.MAIN,
              blkno: int = 0) -> bytes:
    """The page as verifyBackupPageConsistency compares it for a record of rmgr ``rmid``.

    ``rm_mask(copy, blkno)`` if the rmgr has one, else the unmasked bytes (what the
    driver would memcmp; PostgreSQL never enables checking for such rmgrs).  ``forknum``
    does not change the result: PostgreSQL's rm_mask never sees the fork, so a visibility
    map page masked for Heap2 loses its whole bitmap (see ``mask_vm_page_strict``).
    ``blkno`` only matters to heap_mask's speculative-ctid rewrite.  The input is not
    modified.
    """
    ForkNumber(forknum)  # ValueError for a fork that does not exist
    masked = bytearray(page)
    _check_page(masked)
    mask = rm_mask(rmid)
    if mask is not None:
        mask(masked, blkno)
    return bytes(masked)


def mask_vm_page_strict(page: bytes | bytearray) -> bytes:
    """Our rule for visibility map pages: mask pd_lsn and pd_checksum, nothing else.

    PostgreSQL hides the whole VM bitmap: the only checked records that register a VM
    page are Heap2 VISIBLE records (block 0, log_heap_visible; the other VM images are
    XLOG-rmgr full-page writes, never checked), so VM pages are masked with heap_mask;
    and a VM page is PageInit'ed with pd_lower = 24 and pd_upper = pd_special = 8192
    while its bitmap lives at PageGetContents, [24, 8192) -- exactly the "unused space"
    mask_unused_space zeroes.  (It is that, not mask_page_content, that hides it; pd_lower and pd_upper
    survive.)  heap_mask also zeroes pd_prune_xid and the pd_flags hint bits, which VM
    pages never set, and finds no line pointers.  So PostgreSQL never verifies VM bits;
    pagestore compares every bit of them.
    """
    masked = bytearray(page)
    mask_page_lsn_and_checksum(masked)
    return bytes(masked)


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int | None:
    """The first offset where ``a`` and ``b`` differ (the shorter length if one is a
    prefix of the other), or None if they are equal."""
    if a == b:
        return None
    n = min(len(a), len(b))
    lo = 0
    step = 64
    while lo < n:  # find the differing chunk with C-speed comparisons, then the byte
        hi = min(lo + step, n)
        if a[lo:hi] != b[lo:hi]:
            return next(i for i in range(lo, hi) if a[i] != b[i])
        lo = hi
    return n
