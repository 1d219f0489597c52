"""Image layers: one full value per key for a key range, all as of one LSN.

An image layer at LSN L holds, for each key in [key_start, key_end) that exists at L,
its complete value (a page image, or the materialised value of a metadata key); a key
absent from the layer does not exist at L.  Its LSN range is [L, L + 1), like its name
(pagestore.layers.names.image_layer_name).  Mirrors Neon's
pageserver/src/tenant/storage_layer/image_layer.rs; the file layout is
pagestore.layers.format, with every index entry at LSN L and the will_init flag set.

Rules: puts come in strictly ascending key order, inside the key range, else ValueError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from pagestore.layers.names import LayerKind, image_layer_name
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_LSN_ZERO = bytes(LSN_BE.size)
_LSN_ALL = b"\xff" * LSN_BE.size


class ImageLayerWriter(LayerFileWriter):
    """Writes an image layer; see LayerFileWriter for finish(), abort() and ``with``."""

    def __init__(self, directory: Path, key_start: Key, key_end: Key, lsn: Lsn, *,
                 data_block_size: int = DEFAULT_DATA_BLOCK_SIZE,
                 index_block_entries: int = DEFAULT_INDEX_BLOCK_ENTRIES,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, writer: str = "tool") -> None:
        name = image_layer_name(key_start, key_end, lsn)
        super().__init__(directory, LayerKind.IMAGE, name, key_start, key_end, lsn, lsn + 1,
                         data_block_size=data_block_size,
                         index_block_entries=index_block_entries, zstd_level=zstd_level,
                         writer=writer)
        self.lsn = Lsn(lsn)

    def put(self, key: Key, value: bytes) -> None:
        """Add the image of ``key``; keys must be strictly ascending."""
        self._put(key, self.lsn, FLAG_WILL_INIT, value)


class ImageLayerReader(LayerFileReader):
    """Reads an image layer; opening verifies the header and the index summary."""

    def __init__(self, path: Path, *, data_cache_blocks: int = DEFAULT_DATA_CACHE_BLOCKS,
                 index_cache_blocks: int = DEFAULT_INDEX_CACHE_BLOCKS,
                 source: ByteSource | None = None) -> None:
        super().__init__(path, LayerKind.IMAGE, data_cache_blocks=data_cache_blocks,
                         index_cache_blocks=index_cache_blocks, source=source)

    @property
    def lsn(self) -> Lsn:
        return self.lsn_start

    def get(self, key: Key) -> bytes | None:
        """The image of ``key``, or None when the layer has none."""
        key_bytes = key.to_bytes()
        found = self.lookup(key_bytes + _LSN_ZERO, key_bytes + _LSN_ALL)
        return found[0][2] if found else None

    def get_raw(self, key_bytes: bytes) -> bytes | None:
        """``get`` with the key in its 18-byte form."""
        found = self.lookup(key_bytes + _LSN_ZERO, key_bytes + _LSN_ALL)
        return found[0][2] if found else None

    def iter_all(self) -> Iterator[tuple[Key, bytes]]:
        """Every (key, image) in key order."""
        for key, _, _, value in self.iter_entries():
            yield Key.from_bytes(key), value

    def keys(self) -> Iterator[Key]:
        """Keys in order (reads only the index)."""
        return self.iter_keys()
