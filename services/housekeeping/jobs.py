"""Housekeeping jobs: compaction, image layer creation and GC of each timeline.

Rules (ARCHITECTURE.md "Where the next pieces go", pagestore.compaction for the what):
- Jobs of one timeline run one at a time (a lock per timeline); each runs in a worker
  thread.  A job reads the catalog's layer map, writes new layer files (temporary names
  tagged ``housekeeping`` until finished), commits the result as one catalog transaction
  (repo.swap_layers: the old layers out, the new in, layers_version bumped, readers
  notified), and only then unlinks the files the catalog no longer names.  Readers that
  still hold the old map either have the files open (an unlinked file stays readable) or
  find them gone, reload and retry (pagestore.timeline).
- Before a job writes, it sweeps what an earlier job of this service left in the
  directory: its temporary files, and unregistered layer files at or below
  disk_consistent_lsn (a crash between committing a swap and unlinking, or between
  writing and committing).  Ingest's L0 files above disk_consistent_lsn are never touched.
- GC decides under the timeline row's lock (branch creation and lease grants take the
  same lock), so no branch point or lease can appear below the cutoff it sets.
- The scheduler is a supervised loop: every active timeline gets compaction every
  ``compaction_period`` and GC every ``gc_period`` (tenant settings); a failing job is
  logged once per timeline and retried at its next period.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from pagestore import failpoints, metrics
from pagestore.ancestors import ancestor_view
from pagestore.catalog import repo
from pagestore.compaction import (
    WRITER,
    GcPlan,
    compact_level0,
    l0_layers,
    partition_keyspace,
    plan_gc,
    plan_images,
    write_image_layer,
)
from pagestore.config import tenant_settings
from pagestore.errors import FailedPrecondition, Unavailable
from pagestore.keys import controlfile_key
from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.format import fsync_directory, sweep_unregistered
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.proto import common_pb2
from pagestore.redo.apply import reconstruct
from pagestore.redo.context import RedoContext
from pagestore.supervise import SupervisedLoop, describe
from pagestore.timeline import TimelineView, timeline_dir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from pagestore.config import Config, TenantConfig
    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.layers.layermap import ValueChain
    from pagestore.remote.ondemand import LayerFiles

log = logging.getLogger(__name__)

#: How often the scheduler looks for due jobs.
SCHEDULER_TICK = 1.0


@dataclass(slots=True)
class CompactionReport:
    l0_compacted: int = 0
    l1_created: int = 0
    images_created: int = 0
    image_lsn: Lsn = Lsn.INVALID
    bytes_written: int = 0
    elapsed: float = 0.0


@dataclass(slots=True)
class GcReport:
    gc_cutoff_lsn: Lsn
    pitr_cutoff_lsn: Lsn
    plan: GcPlan
    bytes_removed: int = 0
    elapsed: float = 0.0


@dataclass(slots=True)
class _Due:
    compaction: float = 0.0  # monotonic time of the next run
    gc: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # job -> last error logged


class Housekeeper:
    """Runs the jobs, on request (CLI) and on the tenants' schedules."""

    def __init__(self, sessions: sessionmaker[Session], workdir: Path, config: Config, *,
                 layer_files: LayerFiles | None = None) -> None:
        self.sessions = sessions
        self.layer_files = layer_files
        self.workdir = workdir
        self.config = config
        self._locks: dict[tuple[TenantId, TimelineId], asyncio.Lock] = {}
        self._due: dict[tuple[TenantId, TimelineId], _Due] = {}
        self.scheduler = SupervisedLoop("housekeeping", "scheduler", self._schedule,
                                        restart_on_return=True)

    # ------------------------------------------------------------------ settings
    def settings(self, tenant: TenantId) -> TenantConfig:
        with self.sessions.begin() as s:
            overrides = repo.get_tenant_config(s, tenant)
        return tenant_settings(self.config.tenant, overrides)

    def lock(self, tenant: TenantId, timeline: TimelineId) -> asyncio.Lock:
        """The timeline's job lock: compaction, GC and uploads take turns."""
        return self._locks.setdefault((tenant, timeline), asyncio.Lock())

    # ------------------------------------------------------------------ requests
    async def compact(self, tenant: TenantId, timeline: TimelineId, *, force_l0: bool = False,
                      force_images: bool = False) -> CompactionReport:
        async with self.lock(tenant, timeline):
            with metrics.JobTimer("compaction"):
                return await asyncio.to_thread(self._compact, tenant, timeline, force_l0,
                                               force_images)

    async def gc(self, tenant: TenantId, timeline: TimelineId) -> GcReport:
        async with self.lock(tenant, timeline):
            with metrics.JobTimer("gc"):
                return await asyncio.to_thread(self._gc, tenant, timeline)

    # ------------------------------------------------------------------ compaction
    def _load(self, tenant: TenantId, timeline: TimelineId
              ) -> tuple[repo.TimelineRecord, list[LayerDesc], Path]:
        with self.sessions.begin() as s:
            tl, layers = repo.read_layer_map(s, tenant, timeline)
        if tl.state != "active":
            raise FailedPrecondition(f"timeline {timeline} is {tl.state}: housekeeping "
                                     "works on active timelines only")
        directory = timeline_dir(self.workdir, tenant, timeline)
        dcl = tl.disk_consistent_lsn
        sweep_unregistered(directory, {d.file_name for d in layers}, writer=WRITER,
                           owns=lambda n: n.lsn_end - 1 <= dcl)
        return tl, layers, directory

    def _view(self, tenant: TenantId, layers: LayerMap, tl: repo.TimelineRecord,
              maps: list[LayerMap]) -> TimelineView:
        """The timeline's read path over its layer files and, for a branch, its
        ancestors' as of the branch point (pagestore.ancestors; each ancestor map reloads
        itself when the ancestor's own compaction or GC swapped a file); the ancestor maps
        go to ``maps``, for the caller to close."""
        files = self.layer_files
        ancestor = ancestor_view(self.sessions, lambda t: timeline_dir(self.workdir, tenant, t),
                                 tl, maps=maps,
                                 opener=lambda t: files.opener(tenant, t) if files else None)
        return TimelineView(layers, ancestor=ancestor,
                            ancestor_lsn=tl.ancestor_lsn or Lsn.INVALID)

    def _map(self, tenant: TenantId, timeline: TimelineId, layers: list[LayerDesc],
             version: int) -> LayerMap:
        opener = self.layer_files.opener(tenant, timeline) if self.layer_files else None
        return LayerMap(timeline_dir(self.workdir, tenant, timeline), layers, version=version,
                        opener=opener)

    def _open_whole(self, tenant: TenantId, timeline: TimelineId
                    ) -> Callable[[LayerDesc], DeltaLayerReader] | None:
        """How compaction opens its inputs: whole files (downloaded if evicted)."""
        files = self.layer_files
        if files is None or files.storage is None:
            return None

        def open_layer(d: LayerDesc) -> DeltaLayerReader:
            r = files.open(tenant, timeline, d, whole=True)
            assert isinstance(r, DeltaLayerReader)
            return r
        return open_layer

    def _compact(self, tenant: TenantId, timeline: TimelineId, force_l0: bool,
                 force_images: bool) -> CompactionReport:
        t0 = time.monotonic()
        report = CompactionReport()
        settings = self.settings(tenant)
        tl, layers, directory = self._load(tenant, timeline)
        l0 = l0_layers(layers)
        if len(l0) >= settings.compaction_threshold or (force_l0 and len(l0) >= 2):
            new = compact_level0(directory, l0, settings.compaction_target_size,
                                 check=lambda: failpoints.check("housekeeping-compact-partition"),
                                 open_layer=self._open_whole(tenant, timeline))
            self._commit(tenant, timeline, directory, remove=l0, add=new)
            report.l0_compacted, report.l1_created = len(l0), len(new)
            report.bytes_written += sum(d.file_size for d in new)
            with self.sessions.begin() as s:
                tl, layers = repo.read_layer_map(s, tenant, timeline)
        images = self._create_images(tenant, timeline, tl, layers, directory, settings,
                                     force_images)
        if images:
            report.images_created = len(images)
            report.image_lsn = images[0].image_lsn
            report.bytes_written += sum(d.file_size for d in images)
        report.elapsed = time.monotonic() - t0
        if report.l0_compacted or report.images_created:
            log.info("compaction done l0_compacted=%d l1_created=%d images_created=%d "
                     "image_lsn=%s bytes_written=%d elapsed=%.2fs tenant=%s timeline=%s",
                     report.l0_compacted, report.l1_created, report.images_created,
                     report.image_lsn, report.bytes_written, report.elapsed, tenant, timeline)
        return report

    def _create_images(self, tenant: TenantId, timeline: TimelineId, tl: repo.TimelineRecord,
                       layers: list[LayerDesc], directory: Path, settings: TenantConfig,
                       force: bool) -> list[LayerDesc]:
        lsn = tl.disk_consistent_lsn
        if lsn < tl.min_readable_lsn or not any(not d.is_image for d in layers):
            return []
        threshold = 1 if force else settings.image_creation_threshold
        registered = {d.file_name for d in layers}
        layer_map = self._map(tenant, timeline, layers, tl.layers_version)
        ancestor_maps: list[LayerMap] = []
        try:
            view = self._view(tenant, layer_map, tl, ancestor_maps)
            partitions = partition_keyspace(view.keyspace(lsn), settings.compaction_target_size)
            planned = plan_images(layers, partitions, lsn, threshold)
            if not planned:
                return []
            raw = view.image(controlfile_key(), lsn)
            ctx = RedoContext.from_control_file(raw) if raw else RedoContext()

            def redo(chains: list[ValueChain]) -> list[bytes | None]:
                return [reconstruct(ctx, c) for c in chains]

            new: list[LayerDesc] = []
            try:
                for part in planned:
                    failpoints.check("housekeeping-image-partition")
                    d = write_image_layer(directory, view, part, lsn, redo)
                    if d.file_name in registered:  # the same image exists: nothing new
                        continue
                    new.append(d)
                self._commit(tenant, timeline, directory, remove=[], add=new)
            except BaseException:
                for d in new:
                    (directory / d.file_name).unlink(missing_ok=True)
                raise
            return new
        finally:
            for m in (layer_map, *ancestor_maps):
                m.close()

    def _commit(self, tenant: TenantId, timeline: TimelineId, directory: Path, *,
                remove: list[LayerDesc], add: list[LayerDesc], **fields: object) -> int:
        """Swap in one transaction, then unlink the files no longer named."""
        failpoints.check("housekeeping-before-swap")
        with self.sessions.begin() as s:
            version = repo.swap_layers(s, tenant, timeline, remove=remove, add=add, **fields)
        failpoints.check("housekeeping-after-swap")
        self._unlink(directory, remove)
        return version

    @staticmethod
    def _unlink(directory: Path, layers: list[LayerDesc]) -> None:
        for d in layers:
            (directory / d.file_name).unlink(missing_ok=True)
        if layers:
            fsync_directory(directory)

    # ------------------------------------------------------------------ GC
    def _gc(self, tenant: TenantId, timeline: TimelineId) -> GcReport:
        t0 = time.monotonic()
        settings = self.settings(tenant)
        directory = timeline_dir(self.workdir, tenant, timeline)
        now = datetime.datetime.now(datetime.UTC)
        with self.sessions.begin() as s:
            tl = repo.lock_timeline(s, tenant, timeline)
            if tl.state != "active":
                raise FailedPrecondition(f"timeline {timeline} is {tl.state}: GC works on "
                                         "active timelines only")
            dcl = tl.disk_consistent_lsn
            horizon = Lsn(max(int(dcl) - settings.gc_horizon, 0))
            if float(settings.pitr_interval) == 0:
                pitr = dcl
            else:
                when = now - datetime.timedelta(seconds=float(settings.pitr_interval))
                pitr = repo.lsn_reached_before(s, tenant, timeline, when) or Lsn(0)
            cutoff = Lsn(min(max(min(horizon, pitr), tl.gc_cutoff_lsn), dcl))
            layers = repo.list_layers(s, tenant, timeline)
            plan = plan_gc(layers, cutoff,
                           branch_points=repo.branch_points(s, tenant, timeline),
                           leases=repo.active_leases(s, tenant, timeline, now))
            failpoints.check("housekeeping-gc-before-commit")
            repo.swap_layers(s, tenant, timeline, remove=list(plan.remove), add=[],
                             gc_cutoff_lsn=cutoff, pitr_cutoff_lsn=Lsn(min(pitr, dcl)))
            repo.prune_lsn_history(s, tenant, timeline, cutoff)
        failpoints.check("housekeeping-after-swap")
        self._unlink(directory, list(plan.remove))
        report = GcReport(cutoff, Lsn(min(pitr, dcl)), plan,
                          sum(d.file_size for d in plan.remove), time.monotonic() - t0)
        log.info("gc done gc_cutoff_lsn=%s pitr_cutoff_lsn=%s layers_total=%d removed=%d "
                 "bytes_removed=%d needed_by_cutoff=%d needed_by_branches=%d "
                 "needed_by_leases=%d elapsed=%.2fs tenant=%s timeline=%s", cutoff,
                 report.pitr_cutoff_lsn, plan.total, len(plan.remove), report.bytes_removed,
                 plan.needed_by_cutoff, plan.needed_by_branches, plan.needed_by_leases,
                 report.elapsed, tenant, timeline)
        return report

    def job_status(self, tenant: TenantId, timeline: TimelineId) -> common_pb2.LoopStatus:
        """The timeline's scheduled jobs, for `timeline status`: when they run next and
        the last failure of each, if it has not worked since."""
        due = self._due.get((tenant, timeline))
        if due is None:
            return common_pb2.LoopStatus(service="housekeeping", name="jobs",
                                         state="unscheduled", detail="not active, or just started")
        now = time.monotonic()
        detail = (f"next compaction in {max(due.compaction - now, 0):.0f}s, "
                  f"next gc in {max(due.gc - now, 0):.0f}s")
        errors = "; ".join(f"{job}: {text}" for job, text in sorted(due.failures.items()))
        return common_pb2.LoopStatus(service="housekeeping", name="jobs",
                                     state="failing" if errors else "ok", detail=detail,
                                     last_error=errors)

    # ------------------------------------------------------------------ schedule
    async def _schedule(self, loop: SupervisedLoop) -> None:
        loop.detail = "waiting for due jobs"
        while not await loop.sleep(SCHEDULER_TICK):
            timelines = await asyncio.to_thread(self._active_timelines)
            now = time.monotonic()
            for key in list(self._due):
                if key not in timelines:
                    del self._due[key]
            for key, settings in timelines.items():
                due = self._due.setdefault(key, _Due(now + settings.compaction_period,
                                                     now + settings.gc_period))
                if settings.compaction_period and now >= due.compaction:
                    due.compaction = now + settings.compaction_period
                    loop.detail = f"compacting {key[1]}"
                    await self._run_scheduled("compaction", key, due, self.compact(*key))
                if settings.gc_period and now >= due.gc:
                    due.gc = now + settings.gc_period
                    loop.detail = f"gc of {key[1]}"
                    await self._run_scheduled("gc", key, due, self.gc(*key))
                loop.detail = "waiting for due jobs"

    def _active_timelines(self) -> dict[tuple[TenantId, TimelineId], TenantConfig]:
        try:
            with self.sessions.begin() as s:
                rows = [t for t in repo.list_all_timelines(s) if t.state == "active"]
                overrides = {t.tenant_id: repo.get_tenant_config(s, t.tenant_id) for t in rows}
        except sa.exc.DBAPIError as e:
            # The catalog is away (restarting, unreachable): the loop backs off and retries.
            raise Unavailable(f"catalog unavailable: {describe(e)}") from None
        return {(t.tenant_id, t.timeline_id): tenant_settings(self.config.tenant,
                                                               overrides[t.tenant_id])
                for t in rows}

    async def _run_scheduled(self, job: str, key: tuple[TenantId, TimelineId], due: _Due,
                             run: object) -> None:
        try:
            await run  # type: ignore[misc]
            if due.failures.pop(job, None) is not None:
                log.info("scheduled %s works again tenant=%s timeline=%s", job, *key)
        except Exception as e:
            text = describe(e)
            if due.failures.get(job) != text:
                log.warning("scheduled %s failed: %s (retried at its next period) "
                            "tenant=%s timeline=%s", job, text, *key)
            due.failures[job] = text
