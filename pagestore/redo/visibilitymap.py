"""Visibility map and free space map page updates (src/backend/access/heap/visibilitymap.c,
src/backend/storage/freespace/freespace.c and fsmpage.c).

VM pages are standard pages with no line pointers: the bitmap (2 bits per heap block)
starts at PageGetContents (byte 24).  Clearing bits does not change the page LSN;
PostgreSQL's redo does not set it either.
"""

from __future__ import annotations

from pagestore.redo.bufpage import BLCKSZ, page_init, page_is_new

MAPSIZE = BLCKSZ - 24  # BLCKSZ - MAXALIGN(SizeOfPageHeaderData)
MAP_OFFSET = 24
BITS_PER_HEAPBLOCK = 2
HEAPBLOCKS_PER_BYTE = 4
HEAPBLOCKS_PER_PAGE = MAPSIZE * HEAPBLOCKS_PER_BYTE
VISIBILITYMAP_ALL_VISIBLE = 0x01
VISIBILITYMAP_ALL_FROZEN = 0x02
VISIBILITYMAP_VALID_BITS = 0x03

# FSM page: the page header, then FSMPageData {int fp_next_slot; uint8 fp_nodes[]}
FSM_NODES_OFFSET = 24 + 4
FSM_NODES_PER_PAGE = BLCKSZ - 24 - 4
FSM_NON_LEAF_NODES_PER_PAGE = BLCKSZ // 2 - 1
FSM_SLOTS_PER_PAGE = FSM_NODES_PER_PAGE - FSM_NON_LEAF_NODES_PER_PAGE  # 4069
FSM_TREE_DEPTH = 3


def fsm_logical_to_physical(logpageno: int, level: int) -> int:
    """freespace.c fsm_logical_to_physical: the FSM block of a logical FSM page."""
    leafno = logpageno
    for _ in range(level):
        leafno *= FSM_SLOTS_PER_PAGE
    pages = 0
    for _ in range(FSM_TREE_DEPTH):
        pages += leafno + 1
        leafno //= FSM_SLOTS_PER_PAGE
    pages -= level
    return pages - 1


def vm_map_position(heap_blkno: int) -> tuple[int, int, int]:
    """(VM block, byte in the map, bit offset) of a heap block (HEAPBLK_TO_*)."""
    return (heap_blkno // HEAPBLOCKS_PER_PAGE,
            (heap_blkno % HEAPBLOCKS_PER_PAGE) // HEAPBLOCKS_PER_BYTE,
            (heap_blkno % HEAPBLOCKS_PER_BYTE) * BITS_PER_HEAPBLOCK)


def vm_prepare(page: bytearray) -> None:
    """vm_readbuf: a new (all-zero) VM page is initialised before use."""
    if page_is_new(page):
        page_init(page, 0)


def vm_clear(page: bytearray, heap_blkno: int, flags: int) -> None:
    """visibilitymap_clear: clear ``flags`` bits of one heap block; no LSN change."""
    vm_prepare(page)
    _blk, byte, offset = vm_map_position(heap_blkno)
    mask = flags << offset
    at = MAP_OFFSET + byte
    if page[at] & mask:
        page[at] &= ~mask & 0xFF


def vm_truncate(page: bytearray, trunc_byte: int, trunc_offs: int) -> None:
    """visibilitymap_prepare_truncate on the new last page: clear every bit of the heap
    blocks from the truncation point on."""
    at = MAP_OFFSET + trunc_byte
    page[at + 1:MAP_OFFSET + MAPSIZE] = bytes(MAPSIZE - trunc_byte - 1)
    page[at] &= (1 << trunc_offs) - 1


def fsm_truncate_avail(page: bytearray, nslots: int) -> None:
    """fsm_truncate_avail: zero the leaf slots from ``nslots`` on, then rebuild the
    upper nodes (fsm_rebuild_page) if anything changed."""
    start = FSM_NODES_OFFSET + FSM_NON_LEAF_NODES_PER_PAGE + nslots
    end = FSM_NODES_OFFSET + FSM_NODES_PER_PAGE
    if not any(page[start:end]):
        return
    page[start:end] = bytes(end - start)
    nodes = FSM_NODES_OFFSET
    for nodeno in range(FSM_NON_LEAF_NODES_PER_PAGE - 1, -1, -1):
        lchild = 2 * nodeno + 1
        rchild = lchild + 1
        newvalue = 0
        if lchild < FSM_NODES_PER_PAGE:
            newvalue = page[nodes + lchild]
        if rchild < FSM_NODES_PER_PAGE:
            newvalue = max(newvalue, page[nodes + rchild])
        page[nodes + nodeno] = newvalue
