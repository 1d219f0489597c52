"""What pagestore keeps in remote storage, and under which names (Neon's layout).

    tenants/<tenant>/tenant-manifest-<gen>.json               TenantManifest
    tenants/<tenant>/timelines/<timeline>/index_part.json-<gen>  IndexPart
    tenants/<tenant>/timelines/<timeline>/<layer file name>-<gen>  a layer file, as on disk

``<gen>`` is the tenant's generation, 8 lowercase hex digits: every attach of a tenant
gets a new, higher one (the catalog hands it out, above every generation found in the
bucket).  A node writes only objects named with its own generation, so a node whose
generation is stale can never overwrite what a newer one wrote; a layer keeps the
generation it was uploaded with (the index records it), so a new generation reuses the
layers of the old one without copying.  Readers take the index with the highest
generation at or below their own.  Before deleting anything, a node checks that no
manifest of a newer generation exists (it would be deleting what that node may name).

index_part.json is enough to rebuild a timeline on an empty node: its layers (with
kind, level, ranges, size, CRC32C and generation), disk_consistent_lsn (every record up
to it is in those layers) and the timeline's metadata (ancestor and branch point, the
first readable LSN, GC cutoffs, pg version, the WAL source).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pagestore.errors import CorruptionError
from pagestore.ids import TenantId, TimelineId
from pagestore.layers.desc import LayerDesc
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from pagestore.remote.storage import RemoteStorage

INDEX_VERSION = 1
MANIFEST_VERSION = 1
INDEX_NAME = "index_part.json"
MANIFEST_NAME = "tenant-manifest"

_GEN_SUFFIX = re.compile(r"-([0-9a-f]{8})$")


def gen_suffix(generation: int) -> str:
    if not 0 < generation <= 0xFFFF_FFFF:
        raise ValueError(f"bad generation {generation}")
    return f"-{generation:08x}"


def parse_gen_suffix(name: str) -> tuple[str, int] | None:
    """(name without the suffix, generation), or None when ``name`` carries none."""
    m = _GEN_SUFFIX.search(name)
    if m is None:
        return None
    return name[:m.start()], int(m.group(1), 16)


def tenant_prefix(tenant: TenantId) -> str:
    return f"tenants/{tenant}/"


def timelines_prefix(tenant: TenantId) -> str:
    return f"tenants/{tenant}/timelines/"


def timeline_prefix(tenant: TenantId, timeline: TimelineId) -> str:
    return f"tenants/{tenant}/timelines/{timeline}/"


def layer_key(tenant: TenantId, timeline: TimelineId, file_name: str, generation: int) -> str:
    return timeline_prefix(tenant, timeline) + file_name + gen_suffix(generation)


def index_key(tenant: TenantId, timeline: TimelineId, generation: int) -> str:
    return timeline_prefix(tenant, timeline) + INDEX_NAME + gen_suffix(generation)


def manifest_key(tenant: TenantId, generation: int) -> str:
    return tenant_prefix(tenant) + MANIFEST_NAME + gen_suffix(generation) + ".json"


# ------------------------------------------------------------------------ documents

def _lsn(text: object) -> Lsn:
    if not isinstance(text, str):
        raise ValueError(f"expected an LSN string, got {text!r}")
    return Lsn.parse(text)


@dataclass(frozen=True, slots=True)
class TimelineMetadata:
    """The timeline row's fields an attach needs besides its layers."""

    pg_version: int
    ancestor_timeline_id: TimelineId | None
    ancestor_lsn: Lsn | None
    min_readable_lsn: Lsn
    prev_record_lsn: Lsn
    gc_cutoff_lsn: Lsn
    pitr_cutoff_lsn: Lsn
    wal_source: str | None


@dataclass(frozen=True, slots=True)
class IndexPart:
    """One timeline's index_part.json."""

    tenant_id: TenantId
    timeline_id: TimelineId
    generation: int                     # of the node that wrote it
    disk_consistent_lsn: Lsn
    metadata: TimelineMetadata
    layers: tuple[LayerDesc, ...]       # each with the generation it was uploaded with
    version: int = INDEX_VERSION

    def to_json(self) -> bytes:
        m = self.metadata
        doc: dict[str, Any] = {
            "version": self.version,
            "tenant_id": str(self.tenant_id),
            "timeline_id": str(self.timeline_id),
            "generation": self.generation,
            "disk_consistent_lsn": str(self.disk_consistent_lsn),
            "metadata": {
                "pg_version": m.pg_version,
                "ancestor_timeline_id": str(m.ancestor_timeline_id)
                if m.ancestor_timeline_id else None,
                "ancestor_lsn": str(m.ancestor_lsn) if m.ancestor_lsn is not None else None,
                "min_readable_lsn": str(m.min_readable_lsn),
                "prev_record_lsn": str(m.prev_record_lsn),
                "gc_cutoff_lsn": str(m.gc_cutoff_lsn),
                "pitr_cutoff_lsn": str(m.pitr_cutoff_lsn),
                "wal_source": m.wal_source,
            },
            "layer_metadata": {
                d.file_name: {
                    "kind": d.kind, "level": d.level,
                    "key_start": d.key_start.hex(), "key_end": d.key_end.hex(),
                    "lsn_start": str(d.lsn_start), "lsn_end": str(d.lsn_end),
                    "file_size": d.file_size, "checksum": d.checksum,
                    "generation": d.generation,
                } for d in sorted(self.layers, key=lambda d: d.file_name)
            },
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> IndexPart:
        try:
            doc = json.loads(raw)
            if doc.get("version") != INDEX_VERSION:
                raise ValueError(f"unsupported index version {doc.get('version')!r}")
            m = doc["metadata"]
            layers = []
            for name, e in doc["layer_metadata"].items():
                layers.append(LayerDesc(
                    str(e["kind"]), int(e["level"]), bytes.fromhex(e["key_start"]),
                    bytes.fromhex(e["key_end"]), _lsn(e["lsn_start"]), _lsn(e["lsn_end"]),
                    str(name), int(e["file_size"]), int(e["checksum"]),
                    generation=int(e["generation"])))
                if layers[-1].generation <= 0:
                    raise ValueError(f"layer {name} has no generation")
            ancestor = m.get("ancestor_timeline_id")
            return cls(
                tenant_id=TenantId.parse(doc["tenant_id"]),
                timeline_id=TimelineId.parse(doc["timeline_id"]),
                generation=int(doc["generation"]),
                disk_consistent_lsn=_lsn(doc["disk_consistent_lsn"]),
                metadata=TimelineMetadata(
                    pg_version=int(m["pg_version"]),
                    ancestor_timeline_id=TimelineId.parse(ancestor) if ancestor else None,
                    ancestor_lsn=_lsn(m["ancestor_lsn"]) if m.get("ancestor_lsn") else None,
                    min_readable_lsn=_lsn(m["min_readable_lsn"]),
                    prev_record_lsn=_lsn(m["prev_record_lsn"]),
                    gc_cutoff_lsn=_lsn(m["gc_cutoff_lsn"]),
                    pitr_cutoff_lsn=_lsn(m["pitr_cutoff_lsn"]),
                    wal_source=m.get("wal_source")),
                layers=tuple(sorted(layers, key=lambda d: (d.lsn_end, d.file_name))))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CorruptionError(f"{where}: not a valid index_part.json: {e}") from None


@dataclass(frozen=True, slots=True)
class TenantManifest:
    """The tenant's own remote document: its generation and setting overrides."""

    tenant_id: TenantId
    generation: int
    config: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> bytes:
        return json.dumps({"version": self.version, "tenant_id": str(self.tenant_id),
                           "generation": self.generation, "config": self.config},
                          indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> TenantManifest:
        try:
            doc = json.loads(raw)
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported manifest version {doc.get('version')!r}")
            config = doc.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError("config is not a table")
            return cls(TenantId.parse(doc["tenant_id"]), int(doc["generation"]), config)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CorruptionError(f"{where}: not a valid tenant manifest: {e}") from None


# ------------------------------------------------------------------------ lookups

def generations_of(storage: RemoteStorage, prefix: str, stem: str) -> list[tuple[int, str]]:
    """(generation, key) of every object under ``prefix`` named ``stem-<gen>...``,
    highest generation first."""
    out = []
    for obj in storage.list(prefix + stem):
        name = obj.key[len(prefix):]
        if name.endswith(".json") and stem == MANIFEST_NAME:
            name = name[:-len(".json")]
        parsed = parse_gen_suffix(name)
        if parsed is not None and parsed[0] == stem:
            out.append((parsed[1], obj.key))
    out.sort(reverse=True)
    return out


def latest_manifest_generation(storage: RemoteStorage, tenant: TenantId) -> int:
    """The highest generation any node has attached the tenant with (0: never)."""
    found = generations_of(storage, tenant_prefix(tenant), MANIFEST_NAME)
    return found[0][0] if found else 0


def scan_timelines(storage: RemoteStorage, tenant: TenantId) -> tuple[list[TimelineId], int]:
    """One listing of the tenant's timelines: those with at least one index, and the
    highest generation any index is named with (0: none)."""
    timelines: set[TimelineId] = set()
    best = 0
    prefix = timelines_prefix(tenant)
    for obj in storage.list(prefix):
        tl, _, name = obj.key[len(prefix):].partition("/")
        parsed = parse_gen_suffix(name)
        if parsed is not None and parsed[0] == INDEX_NAME:
            timelines.add(TimelineId.parse(tl))
            best = max(best, parsed[1])
    return sorted(timelines), best


def highest_generation(storage: RemoteStorage, tenant: TenantId) -> int:
    """The highest generation named by any manifest or index of the tenant (0: none)."""
    return max(latest_manifest_generation(storage, tenant), scan_timelines(storage, tenant)[1])


def remote_timelines(storage: RemoteStorage, tenant: TenantId) -> list[TimelineId]:
    """The timelines with at least one index in remote storage."""
    return scan_timelines(storage, tenant)[0]


def read_latest_index(storage: RemoteStorage, tenant: TenantId, timeline: TimelineId,
                      max_generation: int | None = None) -> IndexPart | None:
    """The timeline's index with the highest generation at or below ``max_generation``
    (any when None); None when it has none."""
    for gen, key in generations_of(storage, timeline_prefix(tenant, timeline), INDEX_NAME):
        if max_generation is not None and gen > max_generation:
            continue
        index = IndexPart.from_json(storage.get(key), f"{storage.describe()}: {key}")
        if index.tenant_id != tenant or index.timeline_id != timeline:
            raise CorruptionError(f"{storage.describe()}: {key} names tenant "
                                  f"{index.tenant_id} timeline {index.timeline_id}")
        return index
    return None


def read_latest_manifest(storage: RemoteStorage, tenant: TenantId) -> TenantManifest | None:
    found = generations_of(storage, tenant_prefix(tenant), MANIFEST_NAME)
    if not found:
        return None
    key = found[0][1]
    return TenantManifest.from_json(storage.get(key), f"{storage.describe()}: {key}")
