"""The ancestors of a branch, as read-only TimelineViews built from the catalog.

A branch's own layers hold only what happened on it after its branch point; every key
whose own history does not reach an image or an initialising record continues in the
parent as of the branch point (``TimelineView.ancestor``), and so on up the chain.  Ingest
(which must read a branch's pages and metadata to apply new WAL to it) and housekeeping
(compaction and image creation of a branch) build that chain here, from the ancestors'
layer files as the catalog lists them; pageread builds its own from the readers it keeps
(an ancestor's recent tail is in them).

Rules:
- Each ancestor view is over the ancestor's registered layer files only, none of its
  in-memory WAL: a caller that reads through it needs the ancestor's WAL up to the
  branch point to be in layer files (``ancestors_behind`` says which are not).
- Each view's ``refresh`` reloads its ancestor's map from the catalog when a read finds a
  file gone (compaction or GC of the ancestor swapped it), so the read is retried on the
  new map.  GC keeps what a branch point needs, so such a read is never below the
  ancestor's GC cutoff.
- The maps are collected in ``maps`` for the caller to close when done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pagestore.catalog import repo
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.timeline import TimelineView

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.layers.layermap import LayerReader

    Opener = Callable[[LayerDesc], LayerReader] | None

log = logging.getLogger(__name__)


def _no_opener(_timeline: TimelineId) -> Opener:
    return None


def ancestor_view(sessions: sessionmaker[Session], directory: Callable[[TimelineId], Path],
                  timeline: repo.TimelineRecord, *,
                  opener: Callable[[TimelineId], Opener] = _no_opener,
                  maps: list[LayerMap] | None = None) -> TimelineView | None:
    """The view of ``timeline``'s parent (with the parent's own ancestors behind it), or
    None for a timeline that is not a branch.  ``directory(timeline_id)`` is where a
    timeline's layer files are, ``opener(timeline_id)`` its map's layer opener (remote
    storage on); the maps created are appended to ``maps``."""
    if timeline.ancestor_timeline_id is None:
        return None
    tenant = timeline.tenant_id
    with sessions.begin() as s:
        parent, rows = repo.read_layer_map(s, tenant, timeline.ancestor_timeline_id)
    layers = LayerMap(directory(parent.timeline_id), rows, version=parent.layers_version,
                      opener=opener(parent.timeline_id))
    if maps is not None:
        maps.append(layers)
    return TimelineView(layers, ancestor=ancestor_view(sessions, directory, parent,
                                                       opener=opener, maps=maps),
                        ancestor_lsn=parent.ancestor_lsn or Lsn.INVALID,
                        refresh=_refresher(sessions, tenant, parent.timeline_id, layers))


def _refresher(sessions: sessionmaker[Session], tenant: TenantId, timeline: TimelineId,
               layers: LayerMap) -> Callable[[Lsn], bool]:
    def refresh(_lsn: Lsn) -> bool:
        with sessions.begin() as s:
            tl, rows = repo.read_layer_map(s, tenant, timeline)
        changed = layers.replace(rows, tl.layers_version)
        if changed:
            log.info("ancestor layer map reloaded layers=%d layers_version=%d tenant=%s "
                     "timeline=%s", len(rows), tl.layers_version, tenant, timeline)
        return changed
    return refresh


def ancestors_behind(sessions: sessionmaker[Session], timeline: repo.TimelineRecord
                     ) -> list[tuple[repo.TimelineRecord, Lsn]]:
    """The ancestors whose layer files do not yet reach the LSN a read of ``timeline``
    needs from them (their disk_consistent_lsn is below it), each with that LSN: the
    branch point for the parent, min(that, the parent's own branch point) further up."""
    behind = []
    need = timeline.ancestor_lsn
    ancestor_id = timeline.ancestor_timeline_id
    while ancestor_id is not None and need is not None:
        with sessions.begin() as s:
            row = repo.get_timeline(s, timeline.tenant_id, ancestor_id)
        if row.disk_consistent_lsn < need:
            behind.append((row, need))
        if row.ancestor_lsn is not None:
            need = Lsn(min(need, row.ancestor_lsn))
        ancestor_id = row.ancestor_timeline_id
    return behind
