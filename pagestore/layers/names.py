"""Layer file names, as Neon writes them, so people and tools can read a directory listing.

Mirrors Neon's pageserver/src/tenant/storage_layer/layer_name.rs (without the newer
``-v1-<generation>`` suffix):

    delta   <key_start>-<key_end>__<lsn_start>-<lsn_end>
    image   <key_start>-<key_end>__<lsn>

Keys are 36 uppercase hex digits (the 18-byte key encoding, ``str(Key)``), LSNs 16
uppercase hex digits.  Both ranges are half-open: a delta layer covers keys
[key_start, key_end) and LSNs [lsn_start, lsn_end); an image layer holds the images as of
one LSN, which ``LayerName`` records as the range [lsn, lsn + 1) the way Neon does.

Rules: one layer has exactly one name, so only the canonical form parses (upper case,
exact widths, non-empty ranges); anything else is a ValueError naming the text.  Files
being written carry ``TEMP_SUFFIX`` and never parse as layer names.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pagestore.keys import Key
from pagestore.lsn import U64_MAX, Lsn

#: Suffix of a layer file still being written (Neon uses the same one); a startup sweep
#: may delete any file that ends with it.
TEMP_SUFFIX = ".___temp"

_KEY_HEX = r"([0-9A-F]{36})"
_LSN_HEX = r"([0-9A-F]{16})"
_DELTA_NAME = re.compile(rf"{_KEY_HEX}-{_KEY_HEX}__{_LSN_HEX}-{_LSN_HEX}")
_IMAGE_NAME = re.compile(rf"{_KEY_HEX}-{_KEY_HEX}__{_LSN_HEX}")


class LayerKind(enum.StrEnum):
    """The two kinds of layer; the values are the catalog's ``layers.kind`` strings."""

    DELTA = "delta"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class LayerName:
    """What a layer file name says: its kind, key range and LSN range (both half-open)."""

    kind: LayerKind
    key_start: Key
    key_end: Key
    lsn_start: Lsn
    lsn_end: Lsn

    @property
    def lsn(self) -> Lsn:
        """An image layer's LSN (``lsn_start``)."""
        if self.kind is not LayerKind.IMAGE:
            raise ValueError(f"{self} is a delta layer: it has an LSN range, not one LSN")
        return self.lsn_start

    @property
    def file_name(self) -> str:
        if self.kind is LayerKind.IMAGE:
            return image_layer_name(self.key_start, self.key_end, self.lsn_start)
        return delta_layer_name(self.key_start, self.key_end, self.lsn_start, self.lsn_end)

    def __str__(self) -> str:
        return self.file_name


def _check_key_range(key_start: Key, key_end: Key) -> None:
    if not key_start < key_end:
        raise ValueError(f"empty key range [{key_start}, {key_end})")


def delta_layer_name(key_start: Key, key_end: Key, lsn_start: int, lsn_end: int) -> str:
    """``<key_start>-<key_end>__<lsn_start>-<lsn_end>``; both ranges must be non-empty."""
    _check_key_range(key_start, key_end)
    if not 0 <= lsn_start < lsn_end <= U64_MAX:
        raise ValueError(f"invalid delta layer LSN range [{lsn_start:X}, {lsn_end:X})")
    return f"{key_start}-{key_end}__{lsn_start:016X}-{lsn_end:016X}"


def image_layer_name(key_start: Key, key_end: Key, lsn: int) -> str:
    """``<key_start>-<key_end>__<lsn>``; the key range must be non-empty."""
    _check_key_range(key_start, key_end)
    if not 0 <= lsn < U64_MAX:
        raise ValueError(f"invalid image layer LSN {lsn:X}")
    return f"{key_start}-{key_end}__{lsn:016X}"


def parse_layer_name(name: str) -> LayerName:
    """The kind and ranges a canonical layer file name encodes; ValueError otherwise."""
    m = _DELTA_NAME.fullmatch(name)
    if m is not None:
        kind = LayerKind.DELTA
        lsn_start, lsn_end = int(m[3], 16), int(m[4], 16)
        if not lsn_start < lsn_end:
            raise ValueError(f"invalid layer file name {name!r}: empty LSN range")
    else:
        m = _IMAGE_NAME.fullmatch(name)
        if m is None:
            raise ValueError(
                f"invalid layer file name {name!r}: expected <key_start>-<key_end>__<lsn> "
                "or <key_start>-<key_end>__<lsn_start>-<lsn_end> in upper-case hex")
        kind = LayerKind.IMAGE
        lsn_start = int(m[3], 16)
        if lsn_start == U64_MAX:
            raise ValueError(f"invalid layer file name {name!r}: image LSN out of range")
        lsn_end = lsn_start + 1
    key_start = Key.from_bytes(bytes.fromhex(m[1]))
    key_end = Key.from_bytes(bytes.fromhex(m[2]))
    if not key_start < key_end:
        raise ValueError(f"invalid layer file name {name!r}: empty key range")
    return LayerName(kind, key_start, key_end, Lsn(lsn_start), Lsn(lsn_end))


def is_temp_layer_file_name(name: str) -> bool:
    """True for a file a layer writer left behind (crash or abort before finish)."""
    return name.endswith(TEMP_SUFFIX)
