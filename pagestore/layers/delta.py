"""Delta layers: every version of every key in a key range over an LSN range.

A delta layer holds (key, lsn, will_init, value) for keys in [key_start, key_end) and
LSNs in [lsn_start, lsn_end), at most one value per (key, lsn).  A value is a page image
or an encoded WAL record; ``will_init`` says it needs no older version to be rebuilt
(a full-page image or a record that initialises the page), which is where a reader
walking back from an LSN can stop.  Mirrors Neon's
pageserver/src/tenant/storage_layer/delta_layer.rs; the file layout is
pagestore.layers.format, with the will_init bit in each index entry's flags.

Rules: puts come in strictly ascending (key, lsn) order and inside both ranges, else
ValueError; the file appears under its name (pagestore.layers.names.delta_layer_name)
only once ``finish()`` has made it durable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pagestore.keys import Key
from pagestore.layers.format import (
    DEFAULT_DATA_BLOCK_SIZE,
    DEFAULT_DATA_CACHE_BLOCKS,
    DEFAULT_INDEX_BLOCK_ENTRIES,
    DEFAULT_INDEX_CACHE_BLOCKS,
    DEFAULT_ZSTD_LEVEL,
    FLAG_WILL_INIT,
    LSN_BE,
    ByteSource,
    LayerFileReader,
    LayerFileWriter,
)
from pagestore.layers.names import LayerKind, delta_layer_name
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_LSN_ZERO = bytes(LSN_BE.size)


class DeltaValue(NamedTuple):
    """One version of a key in a delta layer."""

    lsn: Lsn
    will_init: bool
    value: bytes


class DeltaLayerWriter(LayerFileWriter):
    """Writes a delta layer; see LayerFileWriter for finish(), abort() and ``with``."""

    def __init__(self, directory: Path, key_start: Key, key_end: Key, lsn_start: Lsn,
                 lsn_end: Lsn, *, data_block_size: int = DEFAULT_DATA_BLOCK_SIZE,
                 index_block_entries: int = DEFAULT_INDEX_BLOCK_ENTRIES,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, writer: str = "tool") -> None:
        name = delta_layer_name(key_start, key_end, lsn_start, lsn_end)
        super().__init__(directory, LayerKind.DELTA, name, key_start, key_end, lsn_start,
                         lsn_end, data_block_size=data_block_size,
                         index_block_entries=index_block_entries, zstd_level=zstd_level,
                         writer=writer)

    def put(self, key: Key, lsn: Lsn, value: bytes, will_init: bool) -> None:
        """Add one version; (key, lsn) must be above the previous put's."""
        self._put(key, lsn, FLAG_WILL_INIT if will_init else 0, value)


class DeltaLayerReader(LayerFileReader):
    """Reads a delta layer; opening verifies the header and the index summary."""

    def __init__(self, path: Path, *, data_cache_blocks: int = DEFAULT_DATA_CACHE_BLOCKS,
                 index_cache_blocks: int = DEFAULT_INDEX_CACHE_BLOCKS,
                 source: ByteSource | None = None) -> None:
        super().__init__(path, LayerKind.DELTA, data_cache_blocks=data_cache_blocks,
                         index_cache_blocks=index_cache_blocks, source=source)

    def versions(self, key: Key, lsn_end: Lsn) -> list[DeltaValue]:
        """Every version of ``key`` with lsn < lsn_end, oldest first."""
        key_bytes = key.to_bytes()
        if lsn_end <= self.lsn_start:
            return []
        return [DeltaValue(Lsn(lsn), bool(flags & FLAG_WILL_INIT), value)
                for lsn, flags, value in self.lookup(key_bytes + _LSN_ZERO,
                                                     key_bytes + LSN_BE.pack(lsn_end))]

    def needed_versions(self, key_bytes: bytes, lsn_floor: int,
                        lsn_end: int) -> list[tuple[int, bytes]]:
        """The (lsn, value) pairs a read needs from this layer, oldest first: versions of
        the key with lsn_floor <= lsn < lsn_end, from the newest down to the first that
        needs nothing older (will_init).  Older versions are not read."""
        if lsn_end <= self.lsn_start:
            return []
        return [(lsn, value) for lsn, _, value in self.lookup_newest(
            key_bytes + LSN_BE.pack(max(lsn_floor, 0)), key_bytes + LSN_BE.pack(lsn_end))]

    def iter_all(self) -> Iterator[tuple[Key, Lsn, bool, bytes]]:
        """Every (key, lsn, will_init, value) in (key, lsn) order."""
        for key, lsn, flags, value in self.iter_entries():
            yield Key.from_bytes(key), Lsn(lsn), bool(flags & FLAG_WILL_INIT), value

    def keys(self) -> Iterator[Key]:
        """Distinct keys in order (reads only the index)."""
        return self.iter_keys()
