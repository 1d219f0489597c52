"""Compaction, image creation and GC planning over real layer files, without servers.

The oracle for compaction and images is the read path itself: every key read at every
LSN of interest gives the same chain (L0 -> L1) or the same page (images) before and
after, and the files hold exactly the values they replace.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from pagestore import metadata, values
from pagestore.compaction import (
    compact_level0,
    delta_depth,
    l0_layers,
    partition_keyspace,
    plan_gc,
    plan_images,
    write_image_layer,
)
from pagestore.keys import (
    KEY_MAX,
    KEY_MIN,
    Key,
    RelTag,
    dbdir_key,
    rel_block_key,
    rel_dir_key,
    rel_size_key,
)
from pagestore.layers.delta import DeltaLayerReader, DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L0, LEVEL_L1, LayerDesc
from pagestore.layers.image import ImageLayerReader, ImageLayerWriter
from pagestore.layers.layermap import LayerMap, ValueChain
from pagestore.lsn import Lsn
from pagestore.timeline import TimelineView

REL = RelTag(1663, 5, 16384, 0)


def _delta(tmp: Path, entries: list[tuple[Key, int, bytes]], start: int, end: int) -> LayerDesc:
    with DeltaLayerWriter(tmp, KEY_MIN, KEY_MAX, Lsn(start), Lsn(end)) as w:
        for key, lsn, value in sorted(entries, key=lambda e: (e[0].to_bytes(), e[1])):
            w.put(key, Lsn(lsn), value, values.will_init(value))
        return w.finish().desc(LEVEL_L0)


def _l0_history(tmp: Path, rng: random.Random, keys: list[Key], n: int
                ) -> tuple[list[LayerDesc], int]:
    layers, lsn = [], 0x100
    for _ in range(n):
        start, entries = lsn, []
        for _ in range(rng.randint(5, 60)):
            lsn += rng.randint(1, 5)
            entries.append((rng.choice(keys), lsn,
                            values.pg_record(rng.randbytes(rng.randint(10, 3000)), 0,
                                             rng.random() < 0.1)))
        lsn += 1
        layers.append(_delta(tmp, entries, start, lsn))
    return layers, lsn


@pytest.mark.parametrize("seed", range(6))
def test_l0_compaction_keeps_every_value_and_every_read(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    keys = [rel_block_key(REL, b) for b in range(40)]
    l0, end = _l0_history(tmp_path, rng, keys, rng.randint(3, 8))
    before = LayerMap(tmp_path, l0)
    probes = [(rng.choice(keys), rng.randint(0x100, end)) for _ in range(200)]
    expected = [before.get(k, Lsn(x)) for k, x in probes]
    all_before = sorted(e for d in l0 for e in DeltaLayerReader(tmp_path / d.file_name)
                        .iter_entries())
    l1 = compact_level0(tmp_path, l0_layers(l0), target_size=rng.choice((4096, 40_000, 1 << 30)))
    # The L1s tile the key space over the L0s' whole LSN range.
    assert l1[0].key_start == KEY_MIN.to_bytes() and l1[-1].key_end == KEY_MAX.to_bytes()
    assert all(a.key_end == b.key_start for a, b in itertools.pairwise(l1))
    assert {(d.lsn_start, d.lsn_end, d.level) for d in l1} == {
        (l0[0].lsn_start, l0[-1].lsn_end, LEVEL_L1)}
    all_after = sorted(e for d in l1 for e in DeltaLayerReader(tmp_path / d.file_name)
                       .iter_entries())
    assert all_after == all_before
    after = LayerMap(tmp_path, l1)
    for (k, x), want in zip(probes, expected, strict=True):
        got = after.get(k, Lsn(x))
        assert (got.image, got.records) == (want.image, want.records), (str(k), hex(x))


def test_l0_compaction_cuts_partitions_at_the_target_size(tmp_path: Path) -> None:
    keys = [rel_block_key(REL, b) for b in range(100)]
    l0 = [_delta(tmp_path, [(k, 0x100 + i, values.pg_record(b"x" * 1000, 0, True))
                            for i, k in enumerate(keys)], 0x100, 0x200),
          _delta(tmp_path, [(k, 0x200 + i, values.pg_record(b"y" * 1000, 0, False))
                            for i, k in enumerate(keys)], 0x200, 0x300)]
    l1 = compact_level0(tmp_path, l0, target_size=20_000)
    # ~2,000 bytes per key: a cut about every 10 keys, never inside a key's versions.
    assert 8 <= len(l1) <= 12
    for d in l1:
        with DeltaLayerReader(tmp_path / d.file_name) as r:
            assert r.entry_count % 2 == 0
            assert d.file_size > 0


def test_compaction_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    keys = [rel_block_key(REL, b) for b in range(30)]
    l0 = [_delta(tmp_path, [(k, s + i, values.pg_record(b"z" * 900, 0, True))
                            for i, k in enumerate(keys)], s, s + 0x100) for s in (0x100, 0x200)]
    names = {p.name for p in tmp_path.iterdir()}
    calls = []

    def fail_second() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        compact_level0(tmp_path, l0, target_size=5000, check=fail_second)
    assert {p.name for p in tmp_path.iterdir()} == names


def _metadata_image(tmp: Path, nblocks: int, lsn: int) -> LayerDesc:
    """A tiny database at ``lsn``: one relation with ``nblocks`` page images."""
    entries = {dbdir_key(): values.image(metadata.encode_dbdir({(1663, 5): False})),
               rel_dir_key(1663, 5): values.image(metadata.encode_reldir({(REL.relnode, 0)})),
               rel_size_key(REL): values.image(metadata.encode_nblocks(nblocks))}
    for b in range(nblocks):
        entries[rel_block_key(REL, b)] = values.image(bytes([b]) * 8192)
    with ImageLayerWriter(tmp, KEY_MIN, KEY_MAX, Lsn(lsn)) as w:
        for k in sorted(entries, key=Key.to_bytes):
            w.put(k, entries[k])
        return w.finish().desc(LEVEL_L0)


def test_image_layers_hold_what_the_read_path_rebuilds(tmp_path: Path) -> None:
    base = _metadata_image(tmp_path, 6, 0x100)
    # Records: opaque payloads a fake redo appends to the page; the relation shrinks to 4.
    deltas = [_delta(tmp_path, [(rel_block_key(REL, b), 0x101 + 0x10 * i + b,
                                 values.pg_record(bytes([i]), 0, False)) for b in range(6)]
                     + ([(rel_size_key(REL), 0x101 + 0x10 * i + 8,
                          values.image(metadata.encode_nblocks(4)))] if i == 2 else []),
                     0x101 + 0x10 * i, 0x111 + 0x10 * i) for i in range(3)]
    layers = [base, *deltas]
    view = TimelineView(LayerMap(tmp_path, layers))
    lsn = Lsn(0x130)

    def redo(chains: list[ValueChain]) -> list[bytes | None]:
        return [(c.image or b"") + b"".join(values.decode_record_value(v).record  # type: ignore[union-attr]
                                            for _, v in c.records) for c in chains]

    parts = partition_keyspace(view.keyspace(lsn), target_size=2 * 8192)
    assert len(parts) >= 2 and parts[0].key_start == KEY_MIN.to_bytes()
    assert all(a.key_end == b.key_start for a, b in itertools.pairwise(parts))
    assert [k for p in parts for k, page in p.keys if page] == [
        rel_block_key(REL, b) for b in range(4)]  # truncated blocks are gone
    assert delta_depth(layers, parts[0].key_start, parts[-1].key_end, lsn) == 3
    assert plan_images(layers, parts, lsn, 4) == []
    images = [write_image_layer(tmp_path, view, p, lsn, redo)
              for p in plan_images(layers, parts, lsn, 3)]
    for b in range(4):
        chain = view.chain(rel_block_key(REL, b), lsn)
        want = redo([chain])[0]
        found = [ImageLayerReader(tmp_path / d.file_name).get(rel_block_key(REL, b))
                 for d in images]
        assert [f for f in found if f is not None] == [values.image(want)]
    # The new images end every read at or above their LSN; the deltas are no longer needed.
    after = LayerMap(tmp_path, [*layers, *images])
    chain = after.get(rel_block_key(REL, 1), lsn)
    assert chain.image_lsn == lsn and chain.records == []
    assert after.get(rel_block_key(REL, 5), lsn).found is False
    assert delta_depth([*layers, *images], parts[0].key_start, parts[0].key_end, lsn) == 0


# ------------------------------------------------------------------------------- GC

def _desc(kind: str, level: int, ks: int, ke: int, start: int, end: int) -> LayerDesc:
    key = lambda n: bytes([n]) + bytes(17)  # noqa: E731
    name = f"{kind}-{ks}-{ke}-{start:x}-{end:x}"
    return LayerDesc(kind, level, key(ks), key(ke), Lsn(start), Lsn(end), name, 100, 0)


def _img(ks: int, ke: int, lsn: int) -> LayerDesc:
    return _desc("image", LEVEL_L1, ks, ke, lsn, lsn + 1)


BASE = _img(0, 255, 0x100)
D1 = _desc("delta", LEVEL_L1, 0, 255, 0x101, 0x200)
D2 = _desc("delta", LEVEL_L0, 0, 255, 0x200, 0x300)
IMG_LEFT = _img(0, 128, 0x2FF)
IMG_RIGHT = _img(128, 255, 0x2FF)
D3 = _desc("delta", LEVEL_L0, 0, 255, 0x300, 0x400)


@pytest.mark.parametrize("layers,cutoff,branches,leases,removed", [
    # Nothing below the cutoff is covered by a newer image: all kept.
    ([BASE, D1, D2, D3], 0x3FF, [], [], set()),
    # Two partition images at 0x2FF cover everything below: the base, D1 and D2 go.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x3FF, [], [], {BASE, D1, D2}),
    # Only half the key space has a newer image: nothing of the whole range goes.
    ([BASE, D1, D2, IMG_LEFT, D3], 0x3FF, [], [], set()),
    # The cutoff below the images: reads there need the older layers.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x2FE, [], [], set()),
    # A branch at 0x250 needs D2 (holds 0x200..0x250), D1 and the base.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x3FF, [0x250], [], set()),
    # A branch at 0x150: D2 is not needed by it (starts above), D1 and the base are.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x3FF, [0x150], [], {D2}),
    # A lease acts the same.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x3FF, [], [0x150], {D2}),
    # A branch at or above the images needs nothing below them.
    ([BASE, D1, D2, IMG_LEFT, IMG_RIGHT, D3], 0x3FF, [0x2FF], [], {BASE, D1, D2}),
])
def test_gc_plan(layers: list[LayerDesc], cutoff: int, branches: list[int], leases: list[int],
                 removed: set[LayerDesc]) -> None:
    plan = plan_gc(layers, Lsn(cutoff), branch_points=map(Lsn, branches),
                   leases=map(Lsn, leases))
    assert set(plan.remove) == removed
    assert plan.total == len(layers)
    kept = plan.needed_by_cutoff + plan.needed_by_branches + plan.needed_by_leases
    assert kept + len(plan.remove) == len(layers)
    if branches and not removed >= {BASE, D1}:
        assert plan.needed_by_branches > 0
    if leases:
        assert plan.needed_by_leases > 0


def test_gc_then_reads_at_and_above_the_cutoff_are_unchanged(tmp_path: Path) -> None:
    """Model check: after removing what plan_gc says, every read at or above the cutoff
    and at a retained LSN gives the same chain as before."""
    rng = random.Random(7)
    keys = [rel_block_key(REL, b) for b in range(12)]
    layers = [_metadata_image(tmp_path, 12, 0x100)]
    lsn = 0x100
    for round_ in range(6):
        start, entries = lsn + 1, []
        for i in range(30):
            lsn += rng.randint(1, 4)
            entries.append((rng.choice(keys), lsn,
                            values.pg_record(bytes([round_, i]), 0, rng.random() < 0.2)))
        layers.append(_delta(tmp_path, entries, start, lsn + 1))
        if round_ in (1, 3):
            view = TimelineView(LayerMap(tmp_path, list(layers)))
            for part in partition_keyspace(view.keyspace(Lsn(lsn)), 4 * 8192):
                layers.append(write_image_layer(
                    tmp_path, view, part, Lsn(lsn),
                    lambda chains, r=round_: [bytes([r]) * 8192 for _ in chains]))
    cutoff, branch = Lsn(lsn - 40), Lsn(layers[2].lsn_end - 2)
    before = LayerMap(tmp_path, layers)
    probes = [(k, Lsn(x)) for k in keys for x in (branch, cutoff, cutoff + 17, lsn)]
    expected = [before.get(k, x) for k, x in probes]
    plan = plan_gc(layers, cutoff, branch_points=[branch])
    assert plan.remove and plan.needed_by_branches, "the test should remove and keep"
    after = LayerMap(tmp_path, [d for d in layers if d not in plan.remove])
    for (k, x), want in zip(probes, expected, strict=True):
        got = after.get(k, x)
        assert (got.image, got.records) == (want.image, want.records), (str(k), hex(x))
