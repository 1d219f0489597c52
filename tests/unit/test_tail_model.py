"""A model test of pageread's read path under everything that happens to it in production:
ingest publishing batches, flushing layers (real delta layer files), restarting and
streaming its memory again, subscriptions breaking and resuming, layer-map reloads that
arrive late or out of order.  After every step, every key read at a random readable LSN
must give exactly the versions the WAL gave it: never one missing, never one twice.

The ingest side is a model (a list of records and the protocol's rules); the read side
is the real TimelineReader, RecentTail and LayerMap over real layer files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pagestore import values
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import KEY_MAX, KEY_MIN, Key, RelTag, rel_block_key
from pagestore.layers.delta import DeltaLayerWriter
from pagestore.layers.desc import LayerDesc
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from services.pageread.timeline import RecentTail, TimelineReader

KEYS = [rel_block_key(RelTag(1663, 5, 16384), b) for b in range(6)]
BASE = 0x1000


@dataclass
class Ingest:
    """The ingest service as pageread sees it: records in LSN order, a position it has
    ingested up to, what it holds in memory, and what it has flushed."""

    wal: list[tuple[int, list[tuple[Key, bytes]]]]  # (end LSN, values) per record
    work: Path
    pos: int = 0             # next record to ingest
    dcl: int = BASE          # disk_consistent_lsn (catalog)
    memory: list[tuple[int, Key, bytes]] = field(default_factory=list)
    layers: list[LayerDesc] = field(default_factory=list)
    version: int = 0
    subscribed: bool = False
    queue: list[tuple[list[tuple[bytes, int, bytes]], int]] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.wal[self.pos - 1][0] if self.pos else BASE

    def ingest(self) -> None:
        end, vals = self.wal[self.pos]
        self.pos += 1
        self.memory += [(end, k, v) for k, v in vals]
        if self.subscribed:
            self.queue.append(([(k.to_bytes(), end, v) for k, v in vals], end))

    def flush(self) -> None:
        """Flush everything in memory as one L0 layer [dcl + 1, last + 1)."""
        if self.last <= self.dcl:
            return
        start, end = self.dcl + 1, self.last + 1
        if self.memory:
            with DeltaLayerWriter(self.work, KEY_MIN, KEY_MAX, Lsn(start), Lsn(end)) as w:
                for lsn, key, value in sorted(self.memory, key=lambda x: (x[1], x[0])):
                    w.put(key, Lsn(lsn), value, values.will_init(value))
                info = w.finish()
            self.layers.append(info.desc())
        self.version += 1  # a flush without values still moves the map (commit_flush)
        self.dcl = self.last
        self.memory = []

    def reload(self) -> None:
        """A record could not be ingested: memory dropped, streams again from
        disk_consistent_lsn; subscriptions go on (and get values again)."""
        self.memory = []
        self.pos = next((i for i, (end, _) in enumerate(self.wal) if end > self.dcl),
                        len(self.wal))

    def restart(self) -> None:
        """Killed: memory lost, streams again from disk_consistent_lsn."""
        self.reload()
        self.subscribed = False
        self.queue = []

    def subscribe(self, from_lsn: int) -> bool:
        if from_lsn < self.dcl:
            return False  # FailedPrecondition: reload, then again
        self.subscribed = True
        self.queue = [([(k.to_bytes(), lsn, v) for lsn, k, v in self.memory if lsn > from_lsn],
                       self.last)]
        return True


def make_wal(rng: random.Random, n: int) -> list[tuple[int, list[tuple[Key, bytes]]]]:
    wal, lsn = [], BASE
    for i in range(n):
        lsn += rng.choice((0x18, 0x40, 0x100))
        keys = rng.sample(KEYS, rng.randint(0, 2))
        vals = []
        for k in keys:
            if rng.random() < 0.15:
                vals.append((k, values.image(i.to_bytes(4, "little") * 2048)))
            else:
                vals.append((k, values.pg_record(i.to_bytes(4, "little"), 0, False)))
        wal.append((lsn, vals))
    return wal


def expected(wal: list[tuple[int, list[tuple[Key, bytes]]]], key: Key,
             lsn: int) -> list[tuple[int, bytes]]:
    """key's versions at or below lsn, from the newest self-sufficient one (or all)."""
    out = [(end, v) for end, vals in wal if end <= lsn for k, v in vals if k == key]
    for i in range(len(out) - 1, -1, -1):
        if values.will_init(out[i][1]):
            return out[i:]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_reads_see_every_version_exactly_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    wal = make_wal(rng, 150)
    ing = Ingest(wal, tmp_path)
    # The base: every key has an image at BASE in the first layer.
    with DeltaLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(BASE - 0x100), Lsn(BASE + 1)) as w:
        for k in KEYS:
            w.put(k, Lsn(BASE), values.image(b"\xff" * 8192), True)
        info = w.finish()
    ing.layers.append(info.desc())
    wal.insert(0, (BASE, [(k, values.image(b"\xff" * 8192)) for k in KEYS]))
    ing.pos = 1

    async def no_redo(chains):
        raise AssertionError

    r = TimelineReader(TenantId.generate(), TimelineId.generate(), LayerMap(tmp_path, []),
                       min_readable_lsn=Lsn(BASE), gc_cutoff_lsn=Lsn(0), wait_timeout=1,
                       redo=no_redo, cache_pages=0)
    r.tail = RecentTail(chunk_bytes=rng.choice((20_000, 200_000, 10**9)))
    r.apply_layer_map(ing.version, list(ing.layers), Lsn(ing.dcl))
    snapshots: list[tuple[int, list[LayerDesc], int]] = []  # catalog reads not applied yet

    for _step in range(600):
        event = rng.random()
        if event < 0.35 and ing.pos < len(wal):
            ing.ingest()
        elif event < 0.55 and ing.queue:
            vals, last = ing.queue.pop(0)
            r.tail.add(vals)
            r.tail.last_record_lsn = Lsn(last)
        elif event < 0.62:
            ing.flush()
        elif event < 0.72:
            snapshots.append((ing.version, list(ing.layers), ing.dcl))  # a reload reads
        elif event < 0.80 and snapshots:
            # A reload applies what it read, maybe an older read after a newer one.
            v, layers, dcl = snapshots.pop(rng.randrange(len(snapshots)))
            r.apply_layer_map(v, layers, Lsn(dcl))
        elif event < 0.82:
            ing.restart()  # kill -9: the subscription breaks too
        elif event < 0.84:
            ing.reload()
        elif event < 0.86:
            ing.subscribed = False  # the stream breaks (network, overflow)
            ing.queue = []
        elif event < 0.95 and not ing.subscribed:
            # The follower: reload, then subscribe from the map's disk_consistent_lsn.
            r.apply_layer_map(ing.version, list(ing.layers), Lsn(ing.dcl))
            assert ing.subscribe(int(r.layers_disk_consistent_lsn))
        # Every key at a random readable LSN: exactly the WAL's versions.
        last = int(r.last_record_lsn)
        readable = [end for end, _ in wal if BASE <= end <= last]
        for lsn in rng.sample(readable, min(1, len(readable))):
            for key in KEYS:
                chain = r.chain(key, Lsn(lsn))
                got = ([(int(chain.image_lsn), values.image(chain.image))]
                       if chain.image is not None else []) + [(int(a), b) for a, b in
                                                              chain.records]
                assert [a for a, _ in got] == [a for a, _ in expected(wal, key, lsn)], (
                    f"seed {seed} step {_step}: {key} at {lsn}; tail chunks "
                    f"{[(int(c.start_lsn), c.max_lsn) for c in r.tail.chunks]}, layers "
                    f"{[(int(x.lsn_start), int(x.lsn_end)) for x in r.layers.layers]}")
                assert got == expected(wal, key, lsn)
