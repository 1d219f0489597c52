"""Remote storage in housekeeping: uploads, remote deletes, attach and detach.

Uploads (``RemoteSync``, a supervised loop, every ``housekeeping.upload_period``): for each
timeline with data, under the timeline's job lock (compaction and GC do not swap layers
meanwhile), from one catalog snapshot of its layers and LSNs:

1. every layer not uploaded yet is uploaded under the tenant's generation
   (``<name>-<gen>``), then marked uploaded in the catalog (with that generation);
2. the index (index_part.json-<gen>) naming exactly those layers, with the snapshot's
   disk_consistent_lsn and metadata, is uploaded;
3. only then does remote_consistent_lsn move to that disk_consistent_lsn (ingest reports
   it to the WAL source as its flush position);
4. objects the previous index named and this one does not (compaction and GC results)
   are deleted, after checking that no newer generation has attached the tenant
   (its manifest would be in the bucket); a node that finds one is stale: it stops
   uploading and deleting for that tenant and says so in `timeline status`.

Every step is retried on the next round when it fails; none moves
remote_consistent_lsn past what is stored.

Attach (``attach_tenant``): on a node whose catalog does not hold the tenant, take a
generation above every one in the bucket and write the tenant manifest with it (which
fences any older node: before it moves remote_consistent_lsn or deletes, a node checks
for a newer manifest), then read the timelines' newest indexes and register tenant,
timelines (ancestors first) and layers (uploaded, not local).  The caller resumes ingest.  Detach
(``detach_tenant``): the caller stops ingest with a flush; an upload round runs; unless
forced, the detach is refused while a layer or the last LSNs are not in the bucket; then
the catalog rows and the local files go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from pagestore import metrics
from pagestore.catalog import repo
from pagestore.errors import FailedPrecondition, NotFound, PagestoreError, TenantNotFound
from pagestore.remote.layout import (
    IndexPart,
    TenantManifest,
    TimelineMetadata,
    index_key,
    latest_manifest_generation,
    layer_key,
    manifest_key,
    read_latest_index,
    read_latest_manifest,
    scan_timelines,
    tenant_prefix,
    timeline_prefix,
)
from pagestore.remote.storage import retrying
from pagestore.supervise import SupervisedLoop, describe
from pagestore.timeline import tenant_dir, timeline_dir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.remote.ondemand import LayerFiles
    from pagestore.remote.storage import RemoteStorage

log = logging.getLogger(__name__)

#: progress(message, done_bytes, total_bytes): one line for the operator.
Progress: TypeAlias = "Callable[[str, int, int], None]"


@dataclass(slots=True)
class UploadResult:
    layers_uploaded: int = 0
    bytes_uploaded: int = 0
    objects_deleted: int = 0
    remote_consistent_lsn: int = 0
    generation: int = 0


@dataclass(slots=True)
class _TimelineRemote:
    """What this node last stored for a timeline."""

    index: IndexPart | None = None       # the last index uploaded (or found at start)
    pending_deletes: set[str] = field(default_factory=set)  # object keys
    failure: str = ""     # shown in `timeline status` ("" when the last round worked)
    logged: str = ""      # the failure last logged (each one is logged once)


class StaleGeneration(FailedPrecondition):
    """A newer generation has attached the tenant elsewhere: this node must not write."""


class RemoteSync:
    """Uploads layers and indexes, deletes what no index names (module docstring)."""

    def __init__(self, sessions: sessionmaker[Session], workdir: Path, storage: RemoteStorage,
                 layer_files: LayerFiles, *, period: float,
                 lock: Callable[[TenantId, TimelineId], asyncio.Lock]) -> None:
        self.sessions = sessions
        self.workdir = workdir
        self.storage = storage
        self.layer_files = layer_files
        self.period = period
        self._lock = lock
        self._timelines: dict[tuple[TenantId, TimelineId], _TimelineRemote] = {}
        self._manifests: dict[TenantId, int] = {}  # generation whose manifest is stored
        self.stale: dict[TenantId, str] = {}
        self.loop = SupervisedLoop("housekeeping", "uploads", self._run, restart_on_return=True)

    # ------------------------------------------------------------------ the loop
    async def _run(self, loop: SupervisedLoop) -> None:
        loop.detail = "waiting"
        while not await loop.sleep(self.period):
            keys = await asyncio.to_thread(self._timelines_with_data)
            failing = 0
            for key in keys:
                if key[0] in self.stale:
                    continue
                loop.detail = f"uploading {key[1]}"
                st = self._state(key)
                try:
                    await self.sync(*key)
                    if st.failure:
                        log.info("uploads work again tenant=%s timeline=%s", *key)
                    st.failure = ""
                except Exception as e:
                    text = describe(e)
                    if st.failure != text:
                        log.warning("upload failed: %s (retried in %.0fs) tenant=%s "
                                    "timeline=%s", text, self.period, *key)
                    st.failure = text
                    failing += 1
            loop.detail = f"waiting ({failing} timelines failing)" if failing else "waiting"

    def _timelines_with_data(self) -> list[tuple[TenantId, TimelineId]]:
        with self.sessions.begin() as s:
            return [(t.tenant_id, t.timeline_id) for t in repo.list_all_timelines(s)
                    if t.state in ("active", "broken") and
                    (t.min_readable_lsn > 0 or t.ancestor_timeline_id is not None)]

    def _state(self, key: tuple[TenantId, TimelineId]) -> _TimelineRemote:
        return self._timelines.setdefault(key, _TimelineRemote())

    def status(self, tenant: TenantId, timeline: TimelineId) -> tuple[str, str]:
        """(state, detail) of the timeline's uploads, for `timeline status`."""
        if tenant in self.stale:
            return "stale", self.stale[tenant]
        st = self._timelines.get((tenant, timeline))
        if st is None:
            return "pending", "not uploaded yet"
        if st.failure:
            return "failing", st.failure
        idx = st.index
        return "ok", (f"index generation {idx.generation} at {idx.disk_consistent_lsn}"
                      if idx is not None else "nothing uploaded yet")

    # ------------------------------------------------------------------ one timeline
    async def sync(self, tenant: TenantId, timeline: TimelineId,
                   progress: Progress | None = None) -> UploadResult:
        """Upload what the timeline's catalog snapshot has that the bucket lacks, then its
        index, then move remote_consistent_lsn; then delete what no index names."""
        async with self._lock(tenant, timeline):
            with metrics.JobTimer("upload"):
                return await asyncio.to_thread(self._sync, tenant, timeline, progress)

    def _sync(self, tenant: TenantId, timeline: TimelineId,
              progress: Progress | None) -> UploadResult:
        if tenant in self.stale:
            raise StaleGeneration(self.stale[tenant])
        with self.sessions.begin() as s:
            # First in its transaction: the layers and LSNs of one REPEATABLE READ snapshot.
            tl, layers = repo.read_layer_map(s, tenant, timeline)
        if tl.state not in ("active", "broken"):
            raise FailedPrecondition(f"timeline {timeline} is {tl.state}: not uploaded")
        with self.sessions.begin() as s:
            gen = repo.get_tenant(s, tenant).generation
            config = repo.get_tenant_config(s, tenant)
        result = UploadResult(generation=gen)
        self._ensure_manifest(tenant, gen, config)
        st = self._state((tenant, timeline))
        if st.index is None:
            st.index = retrying(lambda: read_latest_index(self.storage, tenant, timeline, gen),
                                f"reading the index of timeline {timeline}")
        def failed(e: Exception) -> None:
            st.failure = f"retrying: {describe(e)}"

        directory = timeline_dir(self.workdir, tenant, timeline)
        todo = [d for d in layers if not d.uploaded]
        total = sum(d.file_size for d in todo)
        uploaded: dict[str, LayerDesc] = {}
        for d in todo:
            key = layer_key(tenant, timeline, d.file_name, gen)
            path = directory / d.file_name
            retrying(lambda k=key, p=path: self.storage.put_file(k, p),  # type: ignore[misc]
                     f"upload of {key}", on_error=failed)
            with self.sessions.begin() as s:
                repo.mark_uploaded(s, tenant, timeline, d.file_name, gen)
            uploaded[d.file_name] = dataclasses.replace(d, generation=gen)
            result.layers_uploaded += 1
            result.bytes_uploaded += d.file_size
            if progress is not None:
                progress(f"uploaded {d.file_name}", result.bytes_uploaded, total)
        if uploaded:
            # The readers' maps learn the layers' generations (an evicted layer is read
            # from its remote copy by that name).
            with self.sessions.begin() as s:
                repo.bump_layers_version(s, tenant, timeline)
                repo.notify_layers(s, tenant, timeline)
        names = tuple(uploaded.get(d.file_name, d) for d in layers)
        index = IndexPart(
            tenant_id=tenant, timeline_id=timeline, generation=gen,
            disk_consistent_lsn=tl.disk_consistent_lsn,
            metadata=TimelineMetadata(
                pg_version=tl.pg_version, ancestor_timeline_id=tl.ancestor_timeline_id,
                ancestor_lsn=tl.ancestor_lsn, min_readable_lsn=tl.min_readable_lsn,
                prev_record_lsn=tl.prev_record_lsn, gc_cutoff_lsn=tl.gc_cutoff_lsn,
                pitr_cutoff_lsn=tl.pitr_cutoff_lsn or tl.gc_cutoff_lsn,
                wal_source=tl.wal_source),
            layers=names)
        previous = st.index
        if previous is None or previous.to_json() != index.to_json():
            raw = index.to_json()
            key = index_key(tenant, timeline, gen)
            retrying(lambda: self.storage.put(key, raw), f"upload of {key}", on_error=failed)
            st.index = index
            if previous is not None:
                kept = {(d.file_name, d.generation) for d in index.layers}
                st.pending_deletes |= {
                    layer_key(tenant, timeline, d.file_name, d.generation)
                    for d in previous.layers if (d.file_name, d.generation) not in kept}
            log.info("uploaded index generation=%d disk_consistent_lsn=%s layers=%d "
                     "new_layers=%d bytes=%d", gen, index.disk_consistent_lsn,
                     len(index.layers), result.layers_uploaded, result.bytes_uploaded)
        if tl.remote_consistent_lsn < index.disk_consistent_lsn:
            # A node attached since with a newer generation reads its own index: what this
            # one stored from now on is not what it resumes from, so the WAL source must
            # keep the WAL (ingest reports remote_consistent_lsn as its flush position).
            self.validate_generation(tenant, gen)
            with self.sessions.begin() as s:
                repo.advance_remote_consistent_lsn(s, tenant, timeline,
                                                   index.disk_consistent_lsn)
        result.remote_consistent_lsn = int(max(tl.remote_consistent_lsn,
                                               index.disk_consistent_lsn))
        if st.pending_deletes:
            self.validate_generation(tenant, gen)
            for key in sorted(st.pending_deletes):
                retrying(lambda k=key: self.storage.delete(k),  # type: ignore[misc]
                         f"delete of {key}")
                st.pending_deletes.discard(key)
                result.objects_deleted += 1
            log.info("deleted %d remote layers no index names", result.objects_deleted)
        return result

    def _ensure_manifest(self, tenant: TenantId, gen: int, config: dict[str, object]) -> None:
        if self._manifests.get(tenant) == gen:
            return
        key = manifest_key(tenant, gen)
        if self.storage.head(key) is None:
            self.validate_generation(tenant, gen)
            raw = TenantManifest(tenant, gen, dict(config)).to_json()
            retrying(lambda: self.storage.put(key, raw), f"upload of {key}")
        self._manifests[tenant] = gen

    def put_manifest(self, tenant: TenantId) -> None:
        """Store the tenant's settings again (after a config change)."""
        with self.sessions.begin() as s:
            gen = repo.get_tenant(s, tenant).generation
            config = repo.get_tenant_config(s, tenant)
        self.validate_generation(tenant, gen)
        raw = TenantManifest(tenant, gen, config).to_json()
        key = manifest_key(tenant, gen)
        retrying(lambda: self.storage.put(key, raw), f"upload of {key}")
        self._manifests[tenant] = gen

    def validate_generation(self, tenant: TenantId, gen: int) -> None:
        """StaleGeneration if a newer generation attached the tenant elsewhere; from
        then on this node leaves the tenant's remote objects alone."""
        newest = retrying(lambda: latest_manifest_generation(self.storage, tenant),
                          f"listing the manifests of tenant {tenant}")
        if newest > gen:
            reason = (f"tenant {tenant} was attached elsewhere with generation {newest} "
                      f"(this node has {gen}): this node no longer uploads or deletes "
                      "its remote objects; detach it here")
            if tenant not in self.stale:
                log.error("stale generation: %s", reason)
            self.stale[tenant] = reason
            raise StaleGeneration(reason)

    def forget(self, tenant: TenantId, timeline: TimelineId | None = None) -> None:
        for key in [k for k in list(self._timelines)
                    if k[0] == tenant and (timeline is None or k[1] == timeline)]:
            self._timelines.pop(key, None)
        if timeline is None:
            self._manifests.pop(tenant, None)
            self.stale.pop(tenant, None)

    def delete_timeline_objects(self, tenant: TenantId, timeline: TimelineId) -> int:
        """Remove a deleted timeline's remote objects (every generation's: the newest
        generation is this node's, validated first)."""
        with self.sessions.begin() as s:
            gen = repo.get_tenant(s, tenant).generation
        self.validate_generation(tenant, gen)
        objects = retrying(lambda: self.storage.list(timeline_prefix(tenant, timeline)),
                           f"listing timeline {timeline}")
        # The indexes first: a half-deleted timeline must not look attachable.
        objects.sort(key=lambda o: "index_part.json" not in o.key)
        for obj in objects:
            retrying(lambda k=obj.key: self.storage.delete(k),  # type: ignore[misc]
                     f"delete of {obj.key}")
        self.forget(tenant, timeline)
        return len(objects)

    def delete_tenant_objects(self, tenant: TenantId) -> int:
        """Remove what is left of a deleted tenant in the bucket (its manifests; its
        timelines' objects went with each timeline's delete)."""
        with self.sessions.begin() as s:
            gen = repo.get_tenant(s, tenant).generation
        self.validate_generation(tenant, gen)
        objects = retrying(lambda: self.storage.list(tenant_prefix(tenant)),
                           f"listing tenant {tenant}")
        for obj in objects:
            retrying(lambda k=obj.key: self.storage.delete(k),  # type: ignore[misc]
                     f"delete of {obj.key}")
        self.forget(tenant)
        return len(objects)

    # ------------------------------------------------------------------ attach / detach
    def attach_tenant(self, tenant: TenantId, progress: Progress) -> repo.TenantRecord:
        """Rebuild the tenant in the catalog from remote storage (module docstring)."""
        with self.sessions.begin() as s:
            try:
                repo.get_tenant(s, tenant)
                raise FailedPrecondition(f"tenant {tenant} is attached to this node already")
            except TenantNotFound:
                pass
        where = self.storage.describe()
        timelines, index_gen = retrying(lambda: scan_timelines(self.storage, tenant),
                                        f"listing tenant {tenant}")
        if not timelines:
            raise NotFound(f"tenant {tenant} not found in {where}: no index_part.json")
        gen = max(index_gen, retrying(lambda: latest_manifest_generation(self.storage, tenant),
                                      f"listing tenant {tenant}")) + 1
        manifest = retrying(lambda: read_latest_manifest(self.storage, tenant),
                            f"reading the manifest of tenant {tenant}")
        config = dict(manifest.config) if manifest is not None else {}
        # Claim the generation before reading the indexes: from here on a node attached
        # with an older one stops moving its remote_consistent_lsn and deleting, so the
        # indexes read next are the last it can make its WAL source forget.
        raw = TenantManifest(tenant, gen, config).to_json()
        key = manifest_key(tenant, gen)
        if not retrying(lambda: self.storage.put_new(key, raw), f"upload of {key}"):
            raise FailedPrecondition(f"tenant {tenant}: another node claimed generation {gen} "
                                     "at the same time (two attaches at once?): retry")
        progress(f"tenant {tenant}: generation {gen} claimed in {where}", 0, 0)
        indexes: dict[TimelineId, IndexPart] = {}
        for tl in timelines:
            idx = retrying(lambda t=tl: read_latest_index(self.storage, tenant, t),  # type: ignore[misc]
                           f"reading the index of timeline {tl}")
            assert idx is not None
            indexes[tl] = idx
            progress(f"timeline {tl}: index generation {idx.generation}, "
                     f"{len(idx.layers)} layers "
                     f"({sum(d.file_size for d in idx.layers)} bytes), disk_consistent_lsn "
                     f"{idx.disk_consistent_lsn}", 0, 0)
        order = _ancestors_first(indexes)
        for tl in order:
            timeline_dir(self.workdir, tenant, tl).mkdir(parents=True, exist_ok=True)
        with self.sessions.begin() as s:
            rec = repo.create_tenant(s, tenant, generation=gen, config=config)
            for tl in order:
                idx = indexes[tl]
                m = idx.metadata
                repo.restore_timeline(
                    s, tenant, tl, pg_version=m.pg_version,
                    ancestor=(m.ancestor_timeline_id, m.ancestor_lsn)
                    if m.ancestor_timeline_id is not None and m.ancestor_lsn is not None
                    else None,
                    wal_source=m.wal_source, min_readable_lsn=m.min_readable_lsn,
                    prev_record_lsn=m.prev_record_lsn,
                    disk_consistent_lsn=idx.disk_consistent_lsn,
                    gc_cutoff_lsn=m.gc_cutoff_lsn, pitr_cutoff_lsn=m.pitr_cutoff_lsn,
                    layers=idx.layers)
        for tl in order:
            self._timelines[(tenant, tl)] = _TimelineRemote(index=indexes[tl])
        self._manifests[tenant] = gen
        self.stale.pop(tenant, None)
        log.info("tenant attached from %s generation=%d timelines=%d tenant=%s", where, gen,
                 len(order), tenant)
        return rec

    def warm(self, tenant: TenantId, progress: Progress) -> int:
        """Download every layer of the tenant that is not on local disk; returns bytes."""
        with self.sessions.begin() as s:
            todo = [(tl.timeline_id, d) for tl in repo.list_timelines(s, tenant)
                    for d in repo.list_layers(s, tenant, tl.timeline_id)]
        todo = [(tl, d) for tl, d in todo
                if not (timeline_dir(self.workdir, tenant, tl) / d.file_name).exists()]
        total = sum(d.file_size for _, d in todo)
        done = 0
        t0 = time.monotonic()
        for tl, d in todo:
            self.layer_files.download(tenant, tl, d).result()
            done += d.file_size
            rate = done / max(time.monotonic() - t0, 1e-6) / 1e6
            progress(f"downloaded {d.file_name} ({rate:.1f} MB/s)", done, total)
        return done

    def check_detachable(self, tenant: TenantId) -> list[str]:
        """What is not in remote storage yet (empty: nothing)."""
        problems = []
        with self.sessions.begin() as s:
            for tl in repo.list_timelines(s, tenant):
                missing = [d for d in repo.list_layers(s, tenant, tl.timeline_id)
                           if not d.uploaded]
                if missing:
                    problems.append(f"timeline {tl.timeline_id}: {len(missing)} layers not "
                                    "uploaded")
                if tl.remote_consistent_lsn < tl.disk_consistent_lsn and (
                        tl.min_readable_lsn > 0 or tl.ancestor_timeline_id is not None):
                    problems.append(f"timeline {tl.timeline_id}: remote_consistent_lsn "
                                    f"{tl.remote_consistent_lsn} < disk_consistent_lsn "
                                    f"{tl.disk_consistent_lsn}")
        return problems

    def drop_local(self, tenant: TenantId) -> None:
        """Remove the tenant's catalog rows and local files (the bucket keeps it)."""
        with self.sessions.begin() as s:
            timelines = repo.list_timelines(s, tenant)
            repo.delete_tenant(s, tenant)
            for tl in timelines:
                repo.notify_layers(s, tenant, tl.timeline_id)
        shutil.rmtree(tenant_dir(self.workdir, tenant), ignore_errors=True)
        self.forget(tenant)


def _ancestors_first(indexes: dict[TimelineId, IndexPart]) -> list[TimelineId]:
    order: list[TimelineId] = []
    seen: set[TimelineId] = set()

    def visit(tl: TimelineId, path: tuple[TimelineId, ...]) -> None:
        if tl in seen:
            return
        if tl in path:
            raise PagestoreError(f"timelines {', '.join(map(str, path))} are each other's "
                                 "ancestors in their indexes")
        parent = indexes[tl].metadata.ancestor_timeline_id
        if parent is not None:
            if parent not in indexes:
                raise PagestoreError(f"timeline {tl} branches from {parent}, which has no "
                                     "index in remote storage")
            visit(parent, (*path, tl))
        seen.add(tl)
        order.append(tl)

    for tl in sorted(indexes):
        visit(tl, ())
    return order
