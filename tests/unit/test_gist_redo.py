"""GiST page helpers and the one PostgreSQL redo divergence the record-level check sets
aside (Gist/DELETE's F_TUPLES_DELETED): only that bit, nothing else."""

from __future__ import annotations

from pagestore.pg.rmgr import RmgrId
from pagestore.redo import gist
from pagestore.redo.bufpage import page_get_max_offset_number
from pagestore.redo.check import POSTGRES_DIVERGENCES


def _leaf() -> bytearray:
    page = bytearray(gist.BLCKSZ)
    gist.gist_init_page(page, gist.F_LEAF)
    return page


def test_gist_init_page_layout() -> None:
    page = _leaf()
    nsn_hi, nsn_lo, rightlink, flags, page_id = gist.GIST_OPAQUE.unpack_from(page, gist.OPAQUE_OFF)
    assert (nsn_hi, nsn_lo, rightlink, flags, page_id) == (0, 0, 0xFFFFFFFF, gist.F_LEAF, 0xFF81)
    assert page_get_max_offset_number(page) == 0


def test_the_divergence_sets_aside_only_f_tuples_deleted() -> None:
    fix = POSTGRES_DIVERGENCES[(RmgrId.GIST, gist.XLOG_GIST_DELETE)]
    ours, theirs = _leaf(), _leaf()
    gist.set_flags(ours, gist.F_LEAF | gist.F_TUPLES_DELETED)  # what the redo does
    fix(ours)
    fix(theirs)
    assert ours == theirs
    other = _leaf()
    gist.set_flags(other, gist.F_LEAF | gist.F_DELETED)
    fix(other)
    assert other != theirs
    flipped = _leaf()
    flipped[100] ^= 1
    fix(flipped)
    assert flipped != theirs
