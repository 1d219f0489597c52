"""SP-GiST redo on hand-built pages and records: the page layout, the dead-tuple former,
the node-link update, record types whose rarer variants a workload seldom reaches
(ADD_NODE with the parent on the new page, VACUUM_REDIRECT), and the errors.  The
byte-for-byte comparison with PostgreSQL's own after-images is the record-level check
over tests/workloads/spgist.sql.
"""

from __future__ import annotations

import struct

import pytest

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.xlogrecord import (
    BlockReference,
    DecodedRecord,
)
from pagestore.redo import spgist
from pagestore.redo.bufpage import (
    BLCKSZ,
    get_item,
    page_add_item,
    page_get_lsn,
    page_get_max_offset_number,
    pd_lower,
    pd_special,
    pd_upper,
)
from tests.unit.redo_records import CTX, END, block, record_of

record = record_of(RmgrId.SPGIST)


def node(blkno: int, off: int, label: bytes = b"") -> bytes:
    size = 8 + len(label)
    return struct.pack("<HHHH", blkno >> 16, blkno & 0xFFFF, off, size) + label


def inner_tuple(prefix: bytes, nodes: list[bytes]) -> bytes:
    body = prefix + b"".join(nodes)
    size = 8 + len(body)
    word = spgist.SPGIST_LIVE | (len(nodes) << 3) | (len(prefix) << 16)
    return struct.pack("<IHxx", word, size) + body


def inner_page(*tuples: bytes) -> bytearray:
    page = bytearray(BLCKSZ)
    spgist.spgist_init_page(page, 0)
    for t in tuples:
        assert page_add_item(page, t, 0) != 0
    return page


def item_bytes(page: bytearray, offnum: int) -> bytes:
    off, length = get_item(page, offnum)
    return bytes(page[off:off + length])


def test_init_page_layout() -> None:
    page = bytearray(b"\xaa" * BLCKSZ)
    spgist.spgist_init_page(page, spgist.SPGIST_LEAF | spgist.SPGIST_NULLS)
    assert (pd_lower(page), pd_upper(page), pd_special(page)) == (24, BLCKSZ - 8, BLCKSZ - 8)
    assert spgist.SPG_OPAQUE.unpack_from(page, BLCKSZ - 8) == (
        spgist.SPGIST_LEAF | spgist.SPGIST_NULLS, 0, 0, 0xFF82)
    assert page[24:BLCKSZ - 8] == bytes(BLCKSZ - 32)


def test_form_dead_tuple() -> None:
    redirect = spgist.form_dead_tuple(spgist.SPGIST_REDIRECT, 0x12345, 7, 999)
    assert redirect == struct.pack("<IHHHHI", 1 | (16 << 2), 0, 0x1, 0x2345, 7, 999)
    # only a REDIRECT keeps a pointer and an xid
    placeholder = spgist.form_dead_tuple(spgist.SPGIST_PLACEHOLDER, 0x12345, 7, 999)
    assert placeholder == struct.pack("<IHHHHI", 3 | (16 << 2), 0, 0xFFFF, 0xFFFF, 0, 0)


def test_update_node_link_walks_prefix_and_node_sizes() -> None:
    tup = inner_tuple(b"PREFIX!!", [node(1, 1, b"aaaaaaaa"), node(2, 2), node(3, 3, b"b" * 16)])
    page = inner_page(tup)
    spgist.update_node_link(page, 1, 2, 0x10005, 9)
    expected = inner_tuple(b"PREFIX!!", [node(1, 1, b"aaaaaaaa"), node(2, 2),
                                         node(0x10005, 9, b"b" * 16)])
    assert item_bytes(page, 1) == expected
    with pytest.raises(CorruptWalError, match="failed to find requested node 3"):
        spgist.update_node_link(page, 1, 3, 1, 1)


def add_node_record(parent_blk: int, *blocks: BlockReference) -> tuple[DecodedRecord, bytes]:
    new_tuple = inner_tuple(b"", [node(0xFFFFFFFF, 0), node(5, 5), node(6, 6)])
    # offnum 1 on block 0, offnumNew 2, parent at offset 1 node 0, myXid 777
    main = spgist.XL_ADD_NODE.pack(1, 2, False, parent_blk, 1, 0, 777, False) + b"\0" * 3
    return record(spgist.XLOG_SPGIST_ADD_NODE, main + new_tuple, *blocks), new_tuple


def test_add_node_with_parent_on_the_new_page() -> None:
    rec, new_tuple = add_node_record(1, block(0, 10), block(1, 20))
    parent = inner_tuple(b"", [node(10, 1), node(11, 1)])
    new_page = inner_page(parent, spgist.form_dead_tuple(spgist.SPGIST_PLACEHOLDER))
    spgist.SPG_OPAQUE.pack_into(new_page, BLCKSZ - 8, 0, 0, 1, 0xFF82)
    spgist.redo_block(CTX, rec, 1, new_page)
    # the placeholder at 2 replaced by the new tuple; the parent's node 0 -> (20, 2)
    assert item_bytes(new_page, 2) == new_tuple
    assert spgist.n_placeholder(new_page) == 0
    assert item_bytes(new_page, 1) == inner_tuple(b"", [node(20, 2), node(11, 1)])
    assert page_get_lsn(new_page) == END

    old_page = inner_page(inner_tuple(b"", [node(5, 5), node(6, 6)]))
    spgist.redo_block(CTX, rec, 0, old_page)
    assert item_bytes(old_page, 1) == spgist.form_dead_tuple(spgist.SPGIST_REDIRECT, 20, 2, 777)
    assert spgist.n_redirection(old_page) == 1


def test_add_node_rejects_a_block_redo_does_not_use() -> None:
    rec, _ = add_node_record(1, block(0, 10), block(1, 20), block(2, 30))
    with pytest.raises(CorruptWalError, match="does not use block reference 2"):
        spgist.redo_block(CTX, rec, 2, inner_page(inner_tuple(b"", [node(1, 1)])))


def test_new_page_flag_must_match_will_init() -> None:
    rec, _ = add_node_record(2, block(0, 10), block(1, 20, will_init=True))
    with pytest.raises(CorruptWalError, match="init flag"):
        spgist.redo_block(CTX, rec, 1, bytearray(BLCKSZ))


def test_replacing_a_live_tuple_is_an_error() -> None:
    page = inner_page(inner_tuple(b"", [node(1, 1)]))
    with pytest.raises(CorruptWalError, match="not a placeholder"):
        spgist.add_or_replace_tuple(page, inner_tuple(b"", [node(2, 2)]), 1)


def test_vacuum_redirect() -> None:
    live = inner_tuple(b"", [node(1, 1)])
    redirect = spgist.form_dead_tuple(spgist.SPGIST_REDIRECT, 4, 4, 555)
    placeholder = spgist.form_dead_tuple(spgist.SPGIST_PLACEHOLDER)
    page = inner_page(redirect, live, redirect, placeholder)
    spgist.SPG_OPAQUE.pack_into(page, BLCKSZ - 8, 0, 2, 1, 0xFF82)
    # redirects at 1 and 3 become placeholders; 3 and 4 are then trailing, removed
    main = spgist.XL_VACUUM_REDIRECT.pack(2, 3, 555) + struct.pack("<HH", 1, 3)
    spgist.redo_block(CTX, record(spgist.XLOG_SPGIST_VACUUM_REDIRECT, main, block(0, 1)), 0,
                      page)
    assert page_get_max_offset_number(page) == 2
    # the xid stays, the pointer is invalidated
    assert item_bytes(page, 1) == struct.pack("<IHHHHI", 3 | (16 << 2), 0, 0xFFFF, 0xFFFF, 0,
                                              555)
    assert item_bytes(page, 2) == live
    assert (spgist.n_redirection(page), spgist.n_placeholder(page)) == (0, 1)


def test_unknown_info_names_the_rmgr() -> None:
    rec = record(0x90, b"", block(0, 1))
    with pytest.raises(UnsupportedWalRecord, match=r"SPGist, info 0x90"):
        spgist.redo_block(CTX, rec, 0, inner_page())
