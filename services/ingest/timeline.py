"""TimelineIngest: one timeline's WAL -> open layer -> L0 delta layer files -> catalog.

Rules (ARCHITECTURE.md, "Durability rules"):
- Records are ingested in LSN order into the open InMemoryLayer; ``last_record_lsn``
  follows the end of the last record.
- The open layer is frozen at ``checkpoint_distance`` bytes of WAL or after
  ``checkpoint_timeout``; a frozen layer covers [start, last_record_lsn + 1).  Frozen
  layers are flushed strictly in LSN order (the oldest first): each is written to an L0
  delta layer file (fsynced), then the file and the new disk_consistent_lsn (= its end -
  1) are registered in the catalog in one transaction, which refuses a flush that does
  not start at disk_consistent_lsn + 1 (no gap, never backwards).  Only then is the
  frozen layer dropped, and only disk_consistent_lsn may be reported to the WAL source
  as flushed.
- A flush is idempotent: retried after any failure (the file written but the commit
  lost, the commit done but its answer lost) it ends in the same state, never a
  FileExistsError or a second row.
- After a crash, ``TimelineIngest.load`` sweeps the leftovers of interrupted writes
  (temporary and unregistered layer files) and rebuilds the metadata state from the
  layer files at disk_consistent_lsn; streaming restarts there, so nothing is lost and
  nothing is stored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore import failpoints, metadata, reldir, values
from pagestore.ancestors import ancestor_view
from pagestore.catalog import repo
from pagestore.errors import FailedPrecondition, PagestoreError
from pagestore.keys import (
    KEY_MAX,
    KEY_MIN,
    RelTag,
    SlruKind,
    checkpoint_key,
    commit_timestamp_key,
    controlfile_key,
    dbdir_key,
    rel_size_key,
    slru_dir_key,
    slru_segment_size_key,
    twophase_dir_key,
)
from pagestore.layers.delta import DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L0, LayerDesc
from pagestore.layers.format import FLAG_WILL_INIT, sweep_unregistered
from pagestore.layers.inmemory import InMemoryLayer
from pagestore.layers.layermap import LayerMap
from pagestore.layers.names import LayerKind
from pagestore.lsn import Lsn
from pagestore.pg.controlfile import CheckPoint, ControlFile
from pagestore.timeline import TimelineView
from pagestore.timestamps import decode_commit_timestamp
from services.ingest.walingest import TimelineState, Values, WalIngest

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from pagestore.ids import TenantId, TimelineId
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.remote.ondemand import LayerFiles

log = logging.getLogger(__name__)

#: The name ingest's layer writers put in their temporary files (its sweep removes only
#: its own: housekeeping writes into the same directories).
WRITER = "ingest"


@dataclass(frozen=True, slots=True)
class IngestSettings:
    checkpoint_distance: int
    checkpoint_timeout: float


def load_state(view: TimelineView, lsn: Lsn) -> TimelineState:
    """The metadata of a timeline as of ``lsn``, read back from its layers."""
    st = TimelineState()
    raw = view.image(dbdir_key(), lsn)
    st.dbdir = metadata.decode_dbdir(raw) if raw else {}
    for spc, db in st.dbdir:
        rels = reldir.read(lambda key: view.image(key, lsn), spc, db)
        st.reldirs[(spc, db)] = rels
        for relnode, fork in rels.entries():
            rel = RelTag(spc, db, relnode, fork)
            size = view.image(rel_size_key(rel), lsn)
            st.relsizes[rel] = metadata.decode_nblocks(size) if size else 0
    for kind in SlruKind:
        raw = view.image(slru_dir_key(kind), lsn)
        st.slru_dirs[kind] = metadata.decode_u32_set(raw) if raw else set()
        for segno in st.slru_dirs[kind]:
            size = view.image(slru_segment_size_key(kind, segno), lsn)
            st.slru_sizes[(kind, segno)] = metadata.decode_nblocks(size) if size else 0
    raw = view.image(twophase_dir_key(), lsn)
    st.twophase = metadata.decode_u32_set(raw) if raw else set()
    raw = view.image(checkpoint_key(), lsn)
    st.checkpoint = CheckPoint.unpack(raw) if raw else None
    st.control = view.image(controlfile_key(), lsn)
    raw = view.image(commit_timestamp_key(), lsn)
    st.commit_timestamp = decode_commit_timestamp(raw) if raw else None
    return st


class TimelineIngest:
    """Ingest state of one timeline (used from one asyncio task plus a flush thread)."""

    def __init__(self, tenant_id: TenantId, timeline_id: TimelineId, timeline_dir: Path,
                 sessions: sessionmaker[Session], settings: IngestSettings, *,
                 layers: LayerMap, state: TimelineState, last_record_lsn: Lsn,
                 prev_record_lsn: Lsn, disk_consistent_lsn: Lsn,
                 ancestor: TimelineView | None = None,
                 ancestor_lsn: Lsn = Lsn.INVALID) -> None:
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.dir = timeline_dir
        self.sessions = sessions
        self.settings = settings
        self.layers = layers
        # A branch reads what its own layers do not hold from its ancestors as of the
        # branch point (pagestore.ancestors): the state load and WalIngest's page reads.
        self.view = TimelineView(layers, sources=self.sources, ancestor=ancestor,
                                 ancestor_lsn=ancestor_lsn,
                                 refresh=lambda _lsn: self.reload_layers())
        self.walingest = WalIngest(state, read_page=self.view.value)
        self.last_record_lsn = last_record_lsn
        self.prev_record_lsn = prev_record_lsn
        self.disk_consistent_lsn = disk_consistent_lsn
        # With remote storage on: the catalog's remote_consistent_lsn, as the ingest
        # manager last read it (None: remote storage off).
        self.remote_consistent_lsn: Lsn | None = None
        self.open = InMemoryLayer(Lsn(last_record_lsn + 1))
        self.frozen: list[InMemoryLayer] = []
        self._lock = threading.Lock()  # guards frozen / layers / disk_consistent_lsn
        self._open_wal_start = last_record_lsn
        self.records = 0

    @classmethod
    def load(cls, tenant_id: TenantId, timeline_id: TimelineId, timeline_dir: Path,
             sessions: sessionmaker[Session], settings: IngestSettings, *,
             layer_files: LayerFiles | None = None) -> TimelineIngest:
        with sessions.begin() as s:
            tl, layer_rows = repo.read_layer_map(s, tenant_id, timeline_id)
        dcl = tl.disk_consistent_lsn
        sweep_unregistered(timeline_dir, {r.file_name for r in layer_rows}, writer=WRITER,
                           owns=lambda n: n.kind is LayerKind.DELTA and n.lsn_start > dcl
                           and n.key_start == KEY_MIN and n.key_end == KEY_MAX)
        layers = LayerMap(timeline_dir, layer_rows, version=tl.layers_version,
                          opener=layer_files.opener(tenant_id, timeline_id)
                          if layer_files is not None else None)
        lsn = tl.disk_consistent_lsn
        # Timelines of a tenant are sibling directories (pagestore.timeline.timeline_dir).
        ancestor = ancestor_view(sessions, lambda t: timeline_dir.parent / str(t), tl,
                                 opener=lambda t: layer_files.opener(tenant_id, t)
                                 if layer_files is not None else None)
        ancestor_lsn = tl.ancestor_lsn or Lsn.INVALID
        state = load_state(TimelineView(layers, ancestor=ancestor, ancestor_lsn=ancestor_lsn),
                           lsn)
        log.info("timeline loaded disk_consistent_lsn=%s layers=%d relations=%d "
                 "ancestor=%s ancestor_lsn=%s tenant=%s timeline=%s", lsn, len(layer_rows),
                 len(state.relsizes), tl.ancestor_timeline_id, tl.ancestor_lsn, tenant_id,
                 timeline_id)
        # A branch starts with prev_record_lsn 0 (the record that ends at its branch point
        # is not known): its first record's xl_prev is then not checked, every later one is.
        prev = tl.prev_record_lsn if tl.last_record_lsn == lsn else Lsn(0)
        tli = cls(tenant_id, timeline_id, timeline_dir, sessions, settings, layers=layers,
                  state=state, last_record_lsn=lsn, prev_record_lsn=prev,
                  disk_consistent_lsn=lsn, ancestor=ancestor, ancestor_lsn=ancestor_lsn)
        if layer_files is not None and layer_files.storage is not None:
            tli.remote_consistent_lsn = tl.remote_consistent_lsn
        return tli

    # ------------------------------------------------------------------ reads
    def sources(self) -> list[InMemoryLayer]:
        with self._lock:
            return [self.open, *self.frozen]

    def snapshot(self) -> tuple[list[InMemoryLayer], Lsn]:
        """The in-memory layers and disk_consistent_lsn, taken together: every value
        above that disk_consistent_lsn is in one of those layers."""
        with self._lock:
            return [self.open, *self.frozen], self.disk_consistent_lsn

    def oldest_frozen(self) -> InMemoryLayer | None:
        with self._lock:
            return self.frozen[0] if self.frozen else None

    def system_identifier(self) -> int:
        """The database system identifier of the timeline's history: its pg_control key
        read at last_record_lsn (through the ancestors for a branch).  Blocking reads:
        call it in a thread."""
        raw = self.view.image(controlfile_key(), self.last_record_lsn)
        if raw is None:
            raise FailedPrecondition(f"timeline {self.timeline_id} has no pg_control at "
                                     f"{self.last_record_lsn}: it holds no imported database")
        return ControlFile.parse(raw).system_identifier

    def reload_layers(self) -> bool:
        """Take the catalog's layer map if it is newer than the one held (housekeeping
        swapped layers: a read found a file gone).  True if the map changed."""
        with self.sessions.begin() as s:
            tl, rows = repo.read_layer_map(s, self.tenant_id, self.timeline_id)
        with self._lock:
            changed = self.layers.replace(rows, tl.layers_version)
        if changed:
            log.info("layer map reloaded layers=%d layers_version=%d", len(rows),
                     tl.layers_version)
        return changed

    # ------------------------------------------------------------------ ingest
    def ingest(self, rec: DecodedRecord) -> Values:
        """Ingest one record; returns the values it produced (key bytes, lsn, value)."""
        out: Values = []
        self.walingest.ingest(rec, out)
        put = self.open.put_raw
        for key, lsn, value in out:
            put(key, lsn, value)
        self.prev_record_lsn = rec.lsn
        self.last_record_lsn = rec.end_lsn
        self.records += 1
        return out

    def should_freeze(self, now: float | None = None) -> bool:
        if self.last_record_lsn <= self._open_wal_start:
            return False
        if self.last_record_lsn - self._open_wal_start >= self.settings.checkpoint_distance:
            return True
        now = time.monotonic() if now is None else now
        return now - self.open.created >= self.settings.checkpoint_timeout

    def freeze(self) -> InMemoryLayer | None:
        """Freeze the open layer at last_record_lsn; returns it (None if nothing new)."""
        if self.last_record_lsn <= self._open_wal_start:
            return None
        layer = self.open
        layer.freeze(Lsn(self.last_record_lsn + 1))
        layer.prev_record_lsn = self.prev_record_lsn
        with self._lock:
            self.frozen.append(layer)
            self.open = InMemoryLayer(Lsn(self.last_record_lsn + 1))
        self._open_wal_start = self.last_record_lsn
        return layer

    def flush(self, layer: InMemoryLayer) -> Lsn:
        """Write the oldest frozen layer to disk and register it (blocking; run it in a
        thread).  Safe to call again for the same layer after any failure."""
        failpoints.check("ingest-flush-start")
        with self._lock:
            if not self.frozen or self.frozen[0] is not layer:
                raise PagestoreError(f"flush of the layer starting at {layer.start_lsn} is out "
                                     "of order: frozen layers are flushed oldest first")
        assert layer.end_lsn is not None
        disk_consistent = Lsn(layer.end_lsn - 1)
        record: LayerDesc | None = None
        with self.sessions.begin() as s:
            done = repo.get_timeline(s, self.tenant_id,
                                     self.timeline_id).disk_consistent_lsn >= disk_consistent
        if layer.count and not done:
            with DeltaLayerWriter(self.dir, KEY_MIN, KEY_MAX, layer.start_lsn,
                                  layer.end_lsn, writer=WRITER) as w:
                put = w.put_raw
                will_init = values.will_init
                for key, lsn, value in layer.sorted_items():
                    put(key, lsn, FLAG_WILL_INIT if will_init(value) else 0, value)
                # A file of this name that no row names is what an earlier attempt left
                # (a crash or a failed commit): replace it.
                record = w.finish(replace=True).desc(LEVEL_L0)
            failpoints.check("ingest-flush-after-write")
        version = None
        if not done:
            with self.sessions.begin() as s:
                version = repo.commit_flush(
                    s, self.tenant_id, self.timeline_id, layer=record,
                    lsn_start=layer.start_lsn, disk_consistent_lsn=disk_consistent,
                    prev_record_lsn=layer.prev_record_lsn)
        failpoints.check("ingest-flush-after-commit")
        if version is None or version != self.layers.version + 1:
            # Registered by an earlier attempt (the layer may even be compacted by now), or
            # housekeeping changed the map since ours was read: take the catalog's, which
            # has this flush (or what replaced it).  Readers of files it no longer names
            # are dropped, so their space is freed.
            self.reload_layers()
        with self._lock:
            if record is not None and version is not None:
                self.layers.add(record, version)
            self.frozen.remove(layer)
            self.disk_consistent_lsn = disk_consistent
        registered = version is not None
        log.info("flushed layer %s values=%d disk_consistent_lsn=%s%s",
                 record.file_name if record else "(none)", layer.count,
                 disk_consistent, "" if registered else " (registered by an earlier attempt)")
        return disk_consistent
