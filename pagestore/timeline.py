"""TimelineView: the one read path of a timeline, used by every service and tool.

"The versions of a key at an LSN across layers, the recent tail and ancestors, then
reconstruct" (ARCHITECTURE.md) lives here and nowhere else:

- ``layers``: the timeline's layer files (LayerMap: an index over key and LSN ranges);
- ``sources``: in-memory versions above them (ingest's open and frozen layers,
  pageread's recent-WAL tail), asked for on every read so the current set is used;
- ``ancestor``: for a branch, the parent's view, read at min(lsn, ancestor_lsn) for keys
  whose own history does not reach an image or an initialising record;
- ``refresh``: called with the read's LSN when a layer file of the map has gone
  (compaction or GC swapped it out after the map was read): it reloads the map and says
  whether anything changed, and the read is retried on the new map.  It must refuse
  (LsnOutOfRange) a read below the GC cutoff the new map comes with: layers such a read
  needs may be gone, and a chain without them would be wrong, not missing.

Materialising pages is the caller's redo strategy: pageread sends chains to the redo
service in batches, offline tools and housekeeping call ``pagestore.redo.apply``
in-process (``page``).  Metadata (sizes, directories) are images and need no redo.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pagestore import metadata, reldir, values
from pagestore.errors import BadRequest, LayerFileMissing, NotFound
from pagestore.keys import (
    BLCKSZ,
    DEFAULTTABLESPACE_OID,
    ForkNumber,
    Key,
    RelTag,
    SlruKind,
    checkpoint_key,
    commit_timestamp_key,
    controlfile_key,
    dbdir_key,
    rel_block_key,
    rel_size_key,
    relmap_key,
    slru_block_key,
    slru_dir_key,
    slru_segment_size_key,
    twophase_dir_key,
    twophase_file_key,
)
from pagestore.layers.layermap import ValueChain, latest_value
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.layermap import LayerMap, VersionSource
    from pagestore.redo.context import RedoContext

log = logging.getLogger(__name__)

#: How often a read retries on a reloaded map after finding a layer file gone.
MISSING_FILE_RETRIES = 3


def tenant_dir(workdir: Path, tenant_id: TenantId) -> Path:
    """Where a tenant's files live under a service's working directory."""
    return workdir / "tenants" / str(tenant_id)


def timeline_dir(workdir: Path, tenant_id: TenantId, timeline_id: TimelineId) -> Path:
    """Where a timeline's layer files live under a service's working directory."""
    return tenant_dir(workdir, tenant_id) / "timelines" / str(timeline_id)


def _no_sources() -> Sequence[VersionSource]:
    return ()


class TimelineView:
    """Reads one timeline's keys at an LSN (see the module docstring)."""

    def __init__(self, layers: LayerMap, *,
                 sources: Callable[[], Sequence[VersionSource]] = _no_sources,
                 ancestor: TimelineView | None = None, ancestor_lsn: Lsn = Lsn.INVALID,
                 refresh: Callable[[Lsn], bool] | None = None) -> None:
        self.layers = layers
        self.sources = sources
        self.ancestor = ancestor
        self.ancestor_lsn = ancestor_lsn
        self.refresh = refresh

    # ------------------------------------------------------------------ versions
    def chain(self, key: Key, lsn: Lsn) -> ValueChain:
        """The versions that rebuild ``key`` as of ``lsn``: this timeline's sources and
        layer files, then, for a branch whose own history does not reach far enough, the
        ancestor's as of the branch point (recursively)."""
        return self.chains([key], lsn)[0]

    def chains(self, keys: Sequence[Key], lsn: Lsn) -> list[ValueChain]:
        """``chain`` of each key; layer files are read once per run of dense keys
        (LayerMap.get_many), which is what full backups and batched reads ask for."""
        for attempt in range(MISSING_FILE_RETRIES + 1):
            try:
                if len(keys) == 1:
                    found = [self.layers.get(keys[0], lsn, self.sources())]
                else:
                    found = self.layers.get_many(keys, lsn, self.sources())
                break
            except LayerFileMissing as e:
                if self.refresh is None or attempt == MISSING_FILE_RETRIES \
                        or not self.refresh(lsn):
                    raise
                log.info("retrying a read of %d keys from %s at %s on a reloaded layer map: "
                         "%s", len(keys), keys[0], lsn, e.message)
        if self.ancestor is None:
            return found
        out = []
        for chain in found:
            if chain.complete or chain.settled:
                out.append(chain)
                continue
            base = self.ancestor.chain(chain.key, Lsn(min(lsn, self.ancestor_lsn)))
            out.append(ValueChain(chain.key, lsn, base.image, base.image_lsn,
                                  [*base.records, *chain.records]))
        return out

    def image(self, key: Key, lsn: Lsn) -> bytes | None:
        """A metadata key's value as of ``lsn`` (None: absent, or a tombstone)."""
        return latest_value(self.chain(key, lsn))

    def value(self, key: Key, lsn: Lsn) -> bytes:
        """A self-sufficient value for ``key`` as of ``lsn``: its image if the newest
        version is one, else a Materialize value carrying the chain for redo (what
        ingest stores when a record's effect depends on a page it reads)."""
        chain = self.chain(key, lsn)
        if not chain.found:
            raise NotFound(f"key {key} has no version at or below {lsn}")
        if not chain.records:
            assert chain.image is not None
            return values.image(chain.image)
        return values.materialize(key.to_bytes(), chain.image,
                                  [(int(k), v) for k, v in chain.records])

    def page(self, ctx: RedoContext, key: Key, lsn: Lsn) -> bytes | None:
        """The page for ``key`` as of ``lsn``, redone in this process; None if the key
        has no version."""
        from pagestore.redo.apply import reconstruct

        return reconstruct(ctx, self.chain(key, lsn))

    # ------------------------------------------------------------------ metadata
    def rel_exists(self, rel: RelTag, lsn: Lsn) -> bool:
        if rel.relnode == 0:
            raise BadRequest(f"invalid relation {rel}: relnode 0")
        return reldir.contains(lambda key: self.image(key, lsn), rel.spcnode, rel.dbnode,
                               (rel.relnode, rel.forknum))

    def rel_size(self, rel: RelTag, lsn: Lsn, *, allow_missing: bool = False) -> int | None:
        """Blocks in a relation fork.

        With ``allow_missing`` (page_api's GetRelSize, the compute's Exists): None when
        the fork does not exist, as the relation directory says -- for every fork.
        Without it (Nblocks, GetPage): a missing FSM or VM fork is 0 blocks (PostgreSQL
        calls smgrnblocks on an FSM fork it created but never extended, as Neon answers);
        a missing main or init fork is NotFound."""
        if rel.relnode == 0:
            raise BadRequest(f"invalid relation {rel}: relnode 0")
        if allow_missing and not self.rel_exists(rel, lsn):
            return None
        return self.rel_size_version(rel, lsn, missing_is_zero=allow_missing)[0]

    def rel_size_version(self, rel: RelTag, lsn: Lsn, *,
                         missing_is_zero: bool = False) -> tuple[int, Lsn | None]:
        """``rel_size`` without ``allow_missing`` (a missing FSM or VM fork is 0 blocks,
        a missing main or init fork NotFound, or 0 with ``missing_is_zero``), and the LSN
        of the size version it read (None when the key has none): the answer holds for
        every LSN from there until the next version (pageread's RelSizeCache)."""
        if rel.relnode == 0:
            raise BadRequest(f"invalid relation {rel}: relnode 0")
        chain = self.chain(rel_size_key(rel), lsn)
        version = chain.records[-1][0] if chain.records else chain.image_lsn
        raw = latest_value(chain)
        if raw is None:
            if missing_is_zero or rel.forknum in (ForkNumber.FSM, ForkNumber.VISIBILITYMAP):
                return 0, version
            raise NotFound(f"Not found: relation {rel} does not exist at {lsn}")
        return metadata.decode_nblocks(raw), version

    def list_relations(self, spcnode: int, dbnode: int, lsn: Lsn) -> list[tuple[RelTag, int]]:
        """Every relation fork of a database with its size in blocks."""
        out = []
        for relnode, fork in reldir.read(lambda key: self.image(key, lsn), spcnode,
                                         dbnode).entries():
            rel = RelTag(spcnode, dbnode, relnode, fork)
            size = self.image(rel_size_key(rel), lsn)
            out.append((rel, metadata.decode_nblocks(size) if size else 0))
        return out

    def logical_size(self, lsn: Lsn) -> int:
        """Bytes of every relation fork of every database at ``lsn`` (Neon's
        current_logical_size: blocks x BLCKSZ; SLRUs and metadata not counted)."""
        raw = self.image(dbdir_key(), lsn)
        dbdir = metadata.decode_dbdir(raw) if raw else {}
        return sum(n for spc, db in dbdir for _, n in self.list_relations(spc, db, lsn)) * BLCKSZ

    def db_size(self, dbnode: int, lsn: Lsn) -> int:
        return sum(n for _, n in self.list_relations(DEFAULTTABLESPACE_OID, dbnode, lsn)) * BLCKSZ

    def slru_segment_blocks(self, kind: SlruKind, segno: int, lsn: Lsn) -> int:
        raw = self.image(slru_segment_size_key(kind, segno), lsn)
        if raw is None:
            raise NotFound(f"Not found: SLRU segment {kind.directory}/{segno:04X} does not "
                           f"exist at {lsn}")
        return metadata.decode_nblocks(raw)

    # ------------------------------------------------------------------ key space
    def keyspace(self, lsn: Lsn) -> Iterator[tuple[Key, bool]]:
        """Every key that exists at ``lsn``, in key order, with True for the keys whose
        value is a page (relation and SLRU blocks: they may need redo) and False for
        metadata.  What an image layer of the whole key range at ``lsn`` holds (Neon's
        collect_keyspace)."""
        def image(key: Key) -> bytes | None:
            return self.image(key, lsn)

        raw = image(dbdir_key())
        dbdir = metadata.decode_dbdir(raw) if raw else {}
        yield dbdir_key(), False
        for (spc, db) in sorted(dbdir):
            if dbdir[(spc, db)]:
                yield relmap_key(spc, db), False
            for key in reldir.stored_keys(image, spc, db):
                yield key, False
            for relnode, fork in reldir.read(image, spc, db).entries():
                rel = RelTag(spc, db, relnode, fork)
                size = self.image(rel_size_key(rel), lsn)
                nblocks = metadata.decode_nblocks(size) if size else 0
                for blkno in range(nblocks):
                    yield rel_block_key(rel, blkno), True
                if size is not None:
                    yield rel_size_key(rel), False
        for kind in SlruKind:
            raw = self.image(slru_dir_key(kind), lsn)
            yield slru_dir_key(kind), False
            for segno in sorted(metadata.decode_u32_set(raw) if raw else set()):
                size = self.image(slru_segment_size_key(kind, segno), lsn)
                for blkno in range(metadata.decode_nblocks(size) if size else 0):
                    yield slru_block_key(kind, segno, blkno), True
                if size is not None:
                    yield slru_segment_size_key(kind, segno), False
        raw = self.image(twophase_dir_key(), lsn)
        yield twophase_dir_key(), False
        for xid in sorted(metadata.decode_u32_set(raw) if raw else set()):
            yield twophase_file_key(xid), False
        yield controlfile_key(), False
        yield checkpoint_key(), False
        if self.image(commit_timestamp_key(), lsn) is not None:
            yield commit_timestamp_key(), False
