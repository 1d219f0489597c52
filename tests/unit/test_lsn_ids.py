from __future__ import annotations

import pytest

from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn


@pytest.mark.parametrize(("text", "value"), [
    ("0/0", 0),
    ("0/16B3748", 0x16B3748),
    ("1/0", 1 << 32),
    ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
    ("a/b", (10 << 32) | 11),
])
def test_lsn_parse_and_print(text: str, value: int) -> None:
    lsn = Lsn.parse(text)
    assert lsn == value
    assert str(lsn) == text.upper()
    assert Lsn.parse(str(lsn)) == lsn


@pytest.mark.parametrize("bad", ["", "16B3748", "0/", "/0", "x/y", "1/2/3", "123456789/0",
                                 "0/123456789"])
def test_lsn_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        Lsn.parse(bad)


def test_lsn_range_and_order() -> None:
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(1 << 64)
    assert Lsn.parse("0/FF") < Lsn.parse("1/0")
    assert f"{Lsn(0x100000010)}" == "1/10"
    assert Lsn.MAX == (1 << 64) - 1


def test_ids() -> None:
    t = TenantId.generate()
    assert len(str(t)) == 32
    assert TenantId.parse(str(t).upper()) == t
    assert TenantId.parse(str(t)) != TimelineId.parse(str(t))  # different kinds never equal
    with pytest.raises(ValueError, match="tenant id"):
        TenantId.parse("abc")
    with pytest.raises(ValueError, match="timeline id"):
        TimelineId.parse("g" * 32)
