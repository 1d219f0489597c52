"""LayerDesc: what the read path and housekeeping know about one layer file.

A descriptor is a value: the layer's kind and level, its key range (18-byte keys, as
bytes, half-open) and LSN range (half-open; an image layer at LSN L has [L, L + 1)), its
file name, size and whole-file CRC32C.  The catalog stores one row per registered layer
and hands descriptors out (pagestore.catalog.repo); a layer writer's ``finish()`` returns
the LayerInfo a descriptor is made from (``LayerInfo.desc``).  Nothing here opens a file.

Levels, as Neon names them: L0 is a delta layer flushed by ingest, covering the whole key
range over one checkpoint's LSNs; L1 deltas are what compaction makes of L0s (key
partitions over the L0s' whole LSN range); image layers hold a key range's images at one
LSN.  The layer map keeps L0 apart: every read may need every L0, while an L1 or an image
layer is visited only for keys in its range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore.layers.names import LayerKind

if TYPE_CHECKING:
    from pagestore.lsn import Lsn

#: The ``level`` of an L0 delta layer (ingest's flushes) and of compaction's output.
LEVEL_L0 = 0
LEVEL_L1 = 1


@dataclass(frozen=True, slots=True)
class LayerDesc:
    """A registered layer file (see the module docstring for the ranges)."""

    kind: str  # LayerKind value: "delta" or "image"
    level: int
    key_start: bytes
    key_end: bytes
    lsn_start: Lsn
    lsn_end: Lsn
    file_name: str
    file_size: int
    checksum: int
    # The tenant generation its remote copy is named with (pagestore.remote.layout);
    # 0 while it is not uploaded.  Not part of the layer's identity.
    generation: int = field(default=0, compare=False)

    @property
    def uploaded(self) -> bool:
        return self.generation > 0

    @property
    def is_image(self) -> bool:
        return self.kind == LayerKind.IMAGE

    @property
    def is_l0(self) -> bool:
        return self.kind == LayerKind.DELTA and self.level == LEVEL_L0

    @property
    def image_lsn(self) -> Lsn:
        """An image layer's LSN."""
        return self.lsn_start

    def covers_keys(self, key_start: bytes, key_end: bytes) -> bool:
        """True when [key_start, key_end) lies inside the layer's key range."""
        return self.key_start <= key_start and key_end <= self.key_end

    @property
    def label(self) -> str:
        """"l0", "l1" or "image": the groups `timeline status` counts."""
        if self.is_image:
            return "image"
        return "l0" if self.level == LEVEL_L0 else "l1"
