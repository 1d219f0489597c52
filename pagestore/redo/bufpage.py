"""Page primitives of PostgreSQL 15 (src/backend/storage/page/bufpage.c, bufpage.h,
itemid.h), on a ``bytearray`` of BLCKSZ bytes.

Byte-exactness is the rule: these functions move exactly the bytes PostgreSQL moves and
leave every other byte as it was (memmove semantics: the space a shifted region leaves
behind keeps its old content, nothing is zeroed unless PostgreSQL zeroes it), because a
page rebuilt by redo must equal the page PostgreSQL's own redo makes.

Layout (little-endian, x86-64/aarch64):

    PageHeaderData (24 bytes): pd_lsn (xlogid u32, xrecoff u32), pd_checksum u16,
      pd_flags u16, pd_lower u16, pd_upper u16, pd_special u16, pd_pagesize_version u16,
      pd_prune_xid u32; then the ItemIdData array.
    ItemIdData (u32 bitfield, low bits first): lp_off:15, lp_flags:2, lp_len:15.

Errors: a page whose pointers are inconsistent raises CorruptionError (PostgreSQL would
raise "corrupted page pointers" / PANIC), never a silently wrong page.
"""

from __future__ import annotations

import struct

from pagestore.errors import CorruptionError
from pagestore.keys import BLCKSZ as BLCKSZ  # re-exported: the page size of every page module

SIZE_OF_PAGE_HEADER = 24
ITEM_ID_SIZE = 4
PG_PAGE_LAYOUT_VERSION = 4
MAXIMUM_ALIGNOF = 8

# PageHeaderData: pd_lsn hi u32, pd_lsn lo u32, pd_checksum u16, pd_flags u16, pd_lower u16,
# pd_upper u16, pd_special u16, pd_pagesize_version u16, pd_prune_xid u32
PAGE_HEADER = struct.Struct("<IIHHHHHHI")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
LSN = struct.Struct("<II")
# ItemPointerData: ip_blkid (bi_hi u16, bi_lo u16), ip_posid u16
ITEM_POINTER = struct.Struct("<HHH")
INVALID_BLOCK_NUMBER = 0xFFFF_FFFF
INDEX_SIZE_MASK = 0x1FFF  # IndexTupleData.t_info: the tuple's size

PD_LSN_OFF = 0
PD_CHECKSUM_OFF = 8
PD_FLAGS_OFF = 10
PD_LOWER_OFF = 12
PD_UPPER_OFF = 14
PD_SPECIAL_OFF = 16
PD_PAGESIZE_VERSION_OFF = 18
PD_PRUNE_XID_OFF = 20

PD_HAS_FREE_LINES = 0x0001
PD_PAGE_FULL = 0x0002
PD_ALL_VISIBLE = 0x0004

LP_UNUSED = 0
LP_NORMAL = 1
LP_REDIRECT = 2
LP_DEAD = 3

FIRST_OFFSET_NUMBER = 1
INVALID_OFFSET_NUMBER = 0
MAX_HEAP_TUPLES_PER_PAGE = 291  # (BLCKSZ - 24) / (MAXALIGN(23) + 4)

PAI_OVERWRITE = 1 << 0
PAI_IS_HEAP = 1 << 1

Page = bytearray


def maxalign(n: int) -> int:
    return (n + 7) & ~7


# --------------------------------------------------------------------------- header

def pd_lower(page: Page) -> int:
    return int(U16.unpack_from(page, PD_LOWER_OFF)[0])


def pd_upper(page: Page) -> int:
    return int(U16.unpack_from(page, PD_UPPER_OFF)[0])


def pd_special(page: Page) -> int:
    return int(U16.unpack_from(page, PD_SPECIAL_OFF)[0])


def pd_flags(page: Page) -> int:
    return int(U16.unpack_from(page, PD_FLAGS_OFF)[0])


def set_pd_lower(page: Page, v: int) -> None:
    U16.pack_into(page, PD_LOWER_OFF, v)


def set_pd_upper(page: Page, v: int) -> None:
    U16.pack_into(page, PD_UPPER_OFF, v)


def set_pd_flags(page: Page, v: int) -> None:
    U16.pack_into(page, PD_FLAGS_OFF, v)


def page_set_flag(page: Page, flag: int) -> None:
    set_pd_flags(page, pd_flags(page) | flag)


def page_clear_flag(page: Page, flag: int) -> None:
    set_pd_flags(page, pd_flags(page) & ~flag)


def page_get_lsn(page: Page) -> int:
    hi, lo = LSN.unpack_from(page, PD_LSN_OFF)
    return int((hi << 32) | lo)


def page_set_lsn(page: Page, lsn: int) -> None:
    LSN.pack_into(page, PD_LSN_OFF, lsn >> 32, lsn & 0xFFFF_FFFF)


def page_get_prune_xid(page: Page) -> int:
    return int(U32.unpack_from(page, PD_PRUNE_XID_OFF)[0])


def page_set_prune_xid(page: Page, xid: int) -> None:
    U32.pack_into(page, PD_PRUNE_XID_OFF, xid)


def page_is_new(page: Page) -> bool:
    """PageIsNew: pd_upper == 0 (a zeroed page)."""
    return pd_upper(page) == 0


def page_init(page: Page, special_size: int) -> None:
    """PageInit: zero the whole page and set up an empty header."""
    special_size = maxalign(special_size)
    page[:] = bytes(BLCKSZ)
    U16.pack_into(page, PD_LOWER_OFF, SIZE_OF_PAGE_HEADER)
    U16.pack_into(page, PD_UPPER_OFF, BLCKSZ - special_size)
    U16.pack_into(page, PD_SPECIAL_OFF, BLCKSZ - special_size)
    U16.pack_into(page, PD_PAGESIZE_VERSION_OFF, BLCKSZ | PG_PAGE_LAYOUT_VERSION)


def new_page(special_size: int) -> Page:
    page = bytearray(BLCKSZ)
    page_init(page, special_size)
    return page


def page_get_max_offset_number(page: Page) -> int:
    lower = pd_lower(page)
    return 0 if lower <= SIZE_OF_PAGE_HEADER else (lower - SIZE_OF_PAGE_HEADER) // ITEM_ID_SIZE


def page_is_empty(page: Page) -> bool:
    return pd_lower(page) <= SIZE_OF_PAGE_HEADER


def _check_pointers(page: Page, *, special_aligned: bool = True) -> tuple[int, int, int]:
    lower, upper, special = pd_lower(page), pd_upper(page), pd_special(page)
    if (lower < SIZE_OF_PAGE_HEADER or lower > upper or upper > special or special > BLCKSZ
            or (special_aligned and special != maxalign(special))):
        raise CorruptionError(
            f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")
    return lower, upper, special


# --------------------------------------------------------------------------- item ids

def item_id_offset(offnum: int) -> int:
    """Byte offset of line pointer ``offnum`` (1-based)."""
    return SIZE_OF_PAGE_HEADER + (offnum - 1) * ITEM_ID_SIZE


def get_item_id(page: Page, offnum: int) -> tuple[int, int, int]:
    """(lp_off, lp_flags, lp_len) of line pointer ``offnum``."""
    (word,) = U32.unpack_from(page, item_id_offset(offnum))
    return word & 0x7FFF, (word >> 15) & 0x3, word >> 17


def set_item_id(page: Page, offnum: int, off: int, flags: int, length: int) -> None:
    U32.pack_into(page, item_id_offset(offnum), off | (flags << 15) | (length << 17))


def item_id_set_unused(page: Page, offnum: int) -> None:
    U32.pack_into(page, item_id_offset(offnum), 0)


def item_id_set_dead(page: Page, offnum: int) -> None:
    set_item_id(page, offnum, 0, LP_DEAD, 0)


def item_id_set_redirect(page: Page, offnum: int, link: int) -> None:
    set_item_id(page, offnum, link, LP_REDIRECT, 0)


def item_id_mark_dead(page: Page, offnum: int) -> None:
    off, _flags, length = get_item_id(page, offnum)
    set_item_id(page, offnum, off, LP_DEAD, length)


def get_item(page: Page, offnum: int) -> tuple[int, int]:
    """(offset, length) of the item at ``offnum``."""
    off, _flags, length = get_item_id(page, offnum)
    return off, length


# --------------------------------------------------------------------------- adding

def page_add_item(page: Page, item: bytes | bytearray | memoryview, offnum: int,
                  flags: int = 0) -> int:
    """PageAddItemExtended; returns the offset number used, or 0 if there is no room
    (or PostgreSQL would refuse with a WARNING)."""
    _check_pointers(page, special_aligned=False)
    size = len(item)
    limit = page_get_max_offset_number(page) + 1
    needshuffle = False
    if offnum != INVALID_OFFSET_NUMBER:
        if flags & PAI_OVERWRITE:
            if offnum < limit:
                _off, lp_flags, length = get_item_id(page, offnum)
                if lp_flags != LP_UNUSED or length != 0:
                    return INVALID_OFFSET_NUMBER
        elif offnum < limit:
            needshuffle = True
    else:
        if pd_flags(page) & PD_HAS_FREE_LINES:
            offnum = FIRST_OFFSET_NUMBER
            while offnum < limit:
                _off, lp_flags, length = get_item_id(page, offnum)
                if lp_flags == LP_UNUSED and length == 0:
                    break
                offnum += 1
            if offnum >= limit:
                page_clear_flag(page, PD_HAS_FREE_LINES)
        else:
            offnum = limit
    if offnum > limit:
        return INVALID_OFFSET_NUMBER
    if flags & PAI_IS_HEAP and offnum > MAX_HEAP_TUPLES_PER_PAGE:
        return INVALID_OFFSET_NUMBER
    lower = pd_lower(page) + ITEM_ID_SIZE if (offnum == limit or needshuffle) else pd_lower(page)
    upper = pd_upper(page) - maxalign(size)
    if lower > upper:
        return INVALID_OFFSET_NUMBER
    if needshuffle:
        start = item_id_offset(offnum)
        end = item_id_offset(limit)
        page[start + ITEM_ID_SIZE:end + ITEM_ID_SIZE] = page[start:end]
    set_item_id(page, offnum, upper, LP_NORMAL, size)
    page[upper:upper + size] = item
    set_pd_lower(page, lower)
    set_pd_upper(page, upper)
    return offnum


# --------------------------------------------------------------------------- compaction

_LP_ARRAYS: dict[int, struct.Struct] = {}


def _lp_array(count: int) -> struct.Struct:
    """The line pointer array of ``count`` entries as one precompiled struct."""
    array = _LP_ARRAYS.get(count)
    if array is None:
        array = _LP_ARRAYS[count] = struct.Struct(f"<{count}I")
    return array


def _compactify(page: Page, items: list[tuple[int, int, int]], words: list[int]) -> None:
    """compactify_tuples: ``items`` are (offsetindex, itemoff, alignedlen) in line-pointer
    order.  Walking them in that order (not in itemoff order: PostgreSQL 14+ places the
    items of a non-presorted array in array order too), each item's aligned bytes go
    contiguously downward from pd_special; line pointers (``words``, the whole array,
    written back here) get their new offsets; pd_upper follows.  The items then fill
    [pd_upper, pd_special) exactly, so the area is built in one piece."""
    orig = bytes(page)
    upper = pd_special(page)
    chunks = []
    for offsetindex, itemoff, alignedlen in items:
        upper -= alignedlen
        chunks.append(orig[itemoff:itemoff + alignedlen])
        words[offsetindex] = (words[offsetindex] & ~0x7FFF) | upper  # lp_off only
    chunks.reverse()
    page[upper:pd_special(page)] = b"".join(chunks)
    _lp_array(len(words)).pack_into(page, SIZE_OF_PAGE_HEADER, *words)
    set_pd_upper(page, upper)


def page_repair_fragmentation(page: Page) -> None:
    """PageRepairFragmentation (heap pages): compact tuples with storage, truncate
    trailing unused line pointers, set PD_HAS_FREE_LINES when unused ones remain."""
    lower, upper, special = _check_pointers(page)
    nline = page_get_max_offset_number(page)
    words = list(_lp_array(nline).unpack_from(page, SIZE_OF_PAGE_HEADER)) if nline else []
    items: list[tuple[int, int, int]] = []
    nunused = 0
    totallen = 0
    finalusedlp = INVALID_OFFSET_NUMBER
    for i, word in enumerate(words):
        if (word >> 15) & 0x3 != LP_UNUSED:
            length = word >> 17
            if length != 0:
                off = word & 0x7FFF
                if off < upper or off >= special:
                    raise CorruptionError(f"corrupted line pointer: {off}")
                alen = maxalign(length)
                items.append((i, off, alen))
                totallen += alen
            finalusedlp = i + 1
        else:
            words[i] = 0  # ItemIdSetUnused
            nunused += 1
    if not items:
        if words:
            _lp_array(nline).pack_into(page, SIZE_OF_PAGE_HEADER, *words)
        set_pd_upper(page, special)
    else:
        if totallen > special - lower:
            raise CorruptionError(f"corrupted item lengths: total {totallen}, available space "
                                  f"{special - lower}")
        _compactify(page, items, words)
    if finalusedlp != nline:
        nunusedend = nline - finalusedlp
        nunused -= nunusedend
        set_pd_lower(page, pd_lower(page) - ITEM_ID_SIZE * nunusedend)
    if nunused > 0:
        page_set_flag(page, PD_HAS_FREE_LINES)
    else:
        page_clear_flag(page, PD_HAS_FREE_LINES)


def page_truncate_line_pointer_array(page: Page) -> None:
    """PageTruncateLinePointerArray: drop trailing LP_UNUSED line pointers (keeping at
    least one), and set or clear PD_HAS_FREE_LINES."""
    countdone = False
    sethint = False
    nunusedend = 0
    for i in range(page_get_max_offset_number(page), FIRST_OFFSET_NUMBER - 1, -1):
        _off, flags, _len = get_item_id(page, i)
        if not countdone and i > FIRST_OFFSET_NUMBER:
            if flags == LP_UNUSED:
                nunusedend += 1
            else:
                countdone = True
        elif flags == LP_UNUSED:
            sethint = True
            break
    if nunusedend > 0:
        set_pd_lower(page, pd_lower(page) - ITEM_ID_SIZE * nunusedend)
    if sethint:
        page_set_flag(page, PD_HAS_FREE_LINES)
    else:
        page_clear_flag(page, PD_HAS_FREE_LINES)


# --------------------------------------------------------------------------- index pages

def _shift_item_offsets(page: Page, count: int, limit: int, delta: int, *,
                        storage_only: bool) -> None:
    """Line pointers 1..count whose lp_off <= ``limit`` (with ``storage_only``: and whose
    lp_len is not 0) move by ``delta`` bytes: the loop that follows each memmove of the
    item area in PageIndexTupleDelete & co, done over the whole array at once."""
    if count <= 0:
        return
    array = _lp_array(count)
    words = array.unpack_from(page, SIZE_OF_PAGE_HEADER)
    if storage_only:
        moved = [w + delta if (w & 0x7FFF) <= limit and w >> 17 else w for w in words]
    else:
        moved = [w + delta if (w & 0x7FFF) <= limit else w for w in words]
    array.pack_into(page, SIZE_OF_PAGE_HEADER, *moved)


def _check_item(page: Page, offnum: int, upper: int, special: int) -> tuple[int, int]:
    off, _flags, size = get_item_id(page, offnum)
    if off < upper or off + size > special or off != maxalign(off):
        raise CorruptionError(f"corrupted line pointer: offset = {off}, size = {size}")
    return off, size


def page_index_tuple_delete(page: Page, offnum: int) -> None:
    """PageIndexTupleDelete: remove one item and its line pointer, closing both gaps."""
    lower, upper, special = _check_pointers(page)
    nline = page_get_max_offset_number(page)
    if offnum <= 0 or offnum > nline:
        raise CorruptionError(f"invalid index offnum: {offnum}")
    offset, size = _check_item(page, offnum, upper, special)
    size = maxalign(size)
    lp = item_id_offset(offnum)
    if lower - (lp + ITEM_ID_SIZE) > 0:
        page[lp:lower - ITEM_ID_SIZE] = page[lp + ITEM_ID_SIZE:lower]
    if offset > upper:
        page[upper + size:offset + size] = page[upper:offset]
    set_pd_upper(page, upper + size)
    set_pd_lower(page, lower - ITEM_ID_SIZE)
    if not page_is_empty(page):
        _shift_item_offsets(page, nline - 1, offset, size, storage_only=False)


def page_index_multi_delete(page: Page, itemnos: list[int]) -> None:
    """PageIndexMultiDelete: ``itemnos`` sorted ascending."""
    if len(itemnos) <= 2:
        for offnum in reversed(itemnos):
            page_index_tuple_delete(page, offnum)
        return
    lower, upper, special = _check_pointers(page)
    nline = page_get_max_offset_number(page)
    words = _lp_array(nline).unpack_from(page, SIZE_OF_PAGE_HEADER) if nline else ()
    items: list[tuple[int, int, int]] = []
    kept: list[int] = []
    nextitm = 0
    totallen = 0
    for i, word in enumerate(words):
        offset, size = word & 0x7FFF, word >> 17
        if offset < upper or offset + size > special or offset != maxalign(offset):
            raise CorruptionError(f"corrupted line pointer: offset = {offset}, size = {size}")
        if nextitm < len(itemnos) and i + 1 == itemnos[nextitm]:
            nextitm += 1
        else:
            alen = maxalign(size)
            items.append((len(kept), offset, alen))
            totallen += alen
            kept.append(word)
    if nextitm != len(itemnos):
        raise CorruptionError("incorrect index offsets supplied")
    if totallen > special - lower:
        raise CorruptionError(f"corrupted item lengths: total {totallen}, available space "
                              f"{special - lower}")
    set_pd_lower(page, SIZE_OF_PAGE_HEADER + ITEM_ID_SIZE * len(kept))
    if kept:
        _compactify(page, items, kept)
    else:
        set_pd_upper(page, special)


def page_index_tuple_delete_no_compact(page: Page, offnum: int) -> None:
    """PageIndexTupleDeleteNoCompact: remove the item's data, keep line pointers (the
    one of a middle item becomes LP_UNUSED; the last one is dropped)."""
    lower, upper, special = _check_pointers(page)
    nline = page_get_max_offset_number(page)
    if offnum <= 0 or offnum > nline:
        raise CorruptionError(f"invalid index offnum: {offnum}")
    offset, size = _check_item(page, offnum, upper, special)
    size = maxalign(size)
    if offnum < nline:
        item_id_set_unused(page, offnum)
    else:
        set_pd_lower(page, lower - ITEM_ID_SIZE)
        nline -= 1
    if offset > upper:
        page[upper + size:offset + size] = page[upper:offset]
    set_pd_upper(page, upper + size)
    if not page_is_empty(page):
        _shift_item_offsets(page, nline, offset, size, storage_only=True)


def page_index_tuple_overwrite(page: Page, offnum: int, newtup: bytes | bytearray | memoryview) -> bool:
    """PageIndexTupleOverwrite: replace an item in place, shifting data if its aligned
    size changes; False if the new tuple does not fit."""
    lower, upper, special = _check_pointers(page)
    itemcount = page_get_max_offset_number(page)
    if offnum <= 0 or offnum > itemcount:
        raise CorruptionError(f"invalid index offnum: {offnum}")
    offset, oldsize = _check_item(page, offnum, upper, special)
    oldsize = maxalign(oldsize)
    newsize = len(newtup)
    alignednewsize = maxalign(newsize)
    if alignednewsize > oldsize + (upper - lower):
        return False
    size_diff = oldsize - alignednewsize
    if size_diff != 0:
        page[upper + size_diff:offset + size_diff] = page[upper:offset]
        set_pd_upper(page, upper + size_diff)
        _shift_item_offsets(page, itemcount, offset, size_diff, storage_only=True)
    _off, flags, _len = get_item_id(page, offnum)
    set_item_id(page, offnum, offset + size_diff, flags, newsize)
    start = offset + size_diff
    page[start:start + newsize] = newtup
    return True


# --------------------------------------------------------------------------- free space

def page_get_free_space(page: Page) -> int:
    """PageGetFreeSpace: room for one more tuple and its line pointer."""
    space = pd_upper(page) - pd_lower(page)
    return 0 if space < ITEM_ID_SIZE else space - ITEM_ID_SIZE


def page_get_exact_free_space(page: Page) -> int:
    space = pd_upper(page) - pd_lower(page)
    return max(space, 0)


def page_get_heap_free_space(page: Page) -> int:
    """PageGetHeapFreeSpace: 0 if no line pointer can be added or reused."""
    space = page_get_free_space(page)
    if space > 0:
        nline = page_get_max_offset_number(page)
        if nline >= MAX_HEAP_TUPLES_PER_PAGE:
            if pd_flags(page) & PD_HAS_FREE_LINES:
                for i in range(FIRST_OFFSET_NUMBER, nline + 1):
                    _off, flags, _len = get_item_id(page, i)
                    if flags == LP_UNUSED:
                        return space
            return 0
    return space
