"""The layer map's search, table-driven and against a model, over real layer files.

Every case builds real delta and image layer files in a temp directory; the oracle is
independent of the layer structure: the versions of a key (records, plus an image at each
image layer's LSN that covers it) and, for a read at LSN X, the chain from the newest
self-sufficient version at or below X.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from pagestore import values
from pagestore.errors import LayerFileMissing
from pagestore.keys import KEY_MAX, KEY_MIN, Key, RelTag, rel_block_key
from pagestore.layers.delta import DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L0, LEVEL_L1, LayerDesc
from pagestore.layers.image import ImageLayerWriter
from pagestore.layers.inmemory import InMemoryLayer
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.timeline import TimelineView

REL = RelTag(1663, 5, 16384, 0)
KEYS = [rel_block_key(REL, b) for b in range(8)]


def rec(tag: str, init: bool = False) -> bytes:
    """A WAL-record value (opaque payload) that does or does not initialise the page."""
    return values.pg_record(tag.encode(), 0, init)


def img(tag: str) -> bytes:
    return values.image(tag.encode())


def delta(tmp: Path, entries: list[tuple[Key, int, bytes]], lsn_start: int, lsn_end: int, *,
          keys: tuple[Key, Key] = (KEY_MIN, KEY_MAX), level: int = LEVEL_L0) -> LayerDesc:
    with DeltaLayerWriter(tmp, keys[0], keys[1], Lsn(lsn_start), Lsn(lsn_end)) as w:
        for key, lsn, value in sorted(entries, key=lambda e: (e[0].to_bytes(), e[1])):
            w.put(key, Lsn(lsn), value, values.will_init(value))
        return w.finish().desc(level)


def image(tmp: Path, entries: dict[Key, bytes], lsn: int, *,
          keys: tuple[Key, Key] = (KEY_MIN, KEY_MAX)) -> LayerDesc:
    with ImageLayerWriter(tmp, keys[0], keys[1], Lsn(lsn)) as w:
        for key in sorted(entries, key=Key.to_bytes):
            w.put(key, entries[key])
        return w.finish().desc(LEVEL_L1)


class CountingMap(LayerMap):
    """A LayerMap that records which layer files a read opened."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.visited: list[str] = []

    def _reader(self, desc: LayerDesc):  # type: ignore[no-untyped-def]
        self.visited.append(desc.file_name)
        return super()._reader(desc)


def read(m: LayerMap, key: Key, lsn: int) -> tuple[int | None, list[int]]:
    """(base image LSN, record LSNs) of a read."""
    chain = m.get(key, Lsn(lsn))
    return chain.image_lsn, [int(x) for x, _ in chain.records]


# ------------------------------------------------------------------------ table-driven

def test_images_before_deltas_and_will_init(tmp_path: Path) -> None:
    k = KEYS[0]
    base = image(tmp_path, {k: img("base"), KEYS[1]: img("b1")}, 0x100)
    l0a = delta(tmp_path, [(k, 0x110, rec("a")), (k, 0x120, rec("b", init=True)),
                           (k, 0x130, rec("c"))], 0x101, 0x200)
    l0b = delta(tmp_path, [(k, 0x210, rec("d")), (KEYS[1], 0x220, rec("e"))], 0x200, 0x300)
    m = CountingMap(tmp_path, [l0b, base, l0a])
    cases = [  # (key, lsn) -> (image lsn, record lsns)
        ((k, 0x100), (0x100, [])),
        ((k, 0x10F), (0x100, [])),
        ((k, 0x110), (0x100, [0x110])),
        ((k, 0x11F), (0x100, [0x110])),
        ((k, 0x120), (None, [0x120])),            # will_init: nothing older is read
        ((k, 0x2FF), (None, [0x120, 0x130, 0x210])),
        ((KEYS[1], 0x2FF), (0x100, [0x220])),
        ((KEYS[2], 0x2FF), (None, [])),           # absent from the image: did not exist
    ]
    for (key, lsn), want in cases:
        assert read(m, key, lsn) == want, (key, hex(lsn))


def test_an_image_inside_a_deltas_range_cuts_the_walk(tmp_path: Path) -> None:
    """An L1 delta over [0x101, 0x400) and an image at 0x200 of its key range: a read
    above the image takes the delta's versions above it and then the image, never the
    delta's older versions nor the base."""
    k = KEYS[3]
    base = image(tmp_path, {k: img("base")}, 0x100)
    l1 = delta(tmp_path, [(k, 0x150, rec("a")), (k, 0x250, rec("b")), (k, 0x350, rec("c"))],
               0x101, 0x400, keys=(KEYS[0], KEYS[7]), level=LEVEL_L1)
    mid = image(tmp_path, {k: img("mid")}, 0x200, keys=(KEYS[0], KEYS[7]))
    m = CountingMap(tmp_path, [base, l1, mid])
    assert read(m, k, 0x3FF) == (0x200, [0x250, 0x350])
    assert read(m, k, 0x200) == (0x200, [])
    assert read(m, k, 0x1FF) == (0x100, [0x150])
    m.visited.clear()
    assert read(m, k, 0x260) == (0x200, [0x250])
    assert m.visited == [l1.file_name, mid.file_name]


def test_layers_whose_key_range_misses_the_key_are_not_visited(tmp_path: Path) -> None:
    lo, hi = KEYS[2], KEYS[4]
    base = image(tmp_path, {k: img(f"base{i}") for i, k in enumerate(KEYS)}, 0x100)
    left = delta(tmp_path, [(KEYS[0], 0x150, rec("l"))], 0x101, 0x200, keys=(KEY_MIN, lo),
                 level=LEVEL_L1)
    middle = delta(tmp_path, [(KEYS[3], 0x150, rec("m"))], 0x101, 0x200, keys=(lo, hi),
                   level=LEVEL_L1)
    right = delta(tmp_path, [(KEYS[5], 0x150, rec("r"))], 0x101, 0x200, keys=(hi, KEY_MAX),
                  level=LEVEL_L1)
    img_right = image(tmp_path, {KEYS[5]: img("r2"), KEYS[6]: img("r3")}, 0x200,
                      keys=(hi, KEY_MAX))
    l0 = delta(tmp_path, [(KEYS[6], 0x250, rec("x"))], 0x201, 0x300)
    m = CountingMap(tmp_path, [base, left, middle, right, img_right, l0])
    assert read(m, KEYS[3], 0x2FF) == (0x100, [0x150])
    assert m.visited == [l0.file_name, middle.file_name, base.file_name]
    m.visited.clear()
    assert read(m, KEYS[6], 0x2FF) == (0x200, [0x250])
    assert m.visited == [l0.file_name, img_right.file_name]
    m.visited.clear()
    assert read(m, KEYS[0], 0x1FF) == (0x100, [0x150])
    assert m.visited == [left.file_name, base.file_name]


def test_l0_layers_overlapping_l1_key_ranges(tmp_path: Path) -> None:
    """L0s (whole key range) above L1 partitions: a read goes down L0s, then the one L1
    partition holding the key, then the image."""
    k = KEYS[5]
    base = image(tmp_path, {k: img("b")}, 0x100)
    l1_lo = delta(tmp_path, [(KEYS[1], 0x180, rec("x"))], 0x101, 0x300,
                  keys=(KEY_MIN, KEYS[4]), level=LEVEL_L1)
    l1_hi = delta(tmp_path, [(k, 0x180, rec("y")), (k, 0x280, rec("z"))], 0x101, 0x300,
                  keys=(KEYS[4], KEY_MAX), level=LEVEL_L1)
    l0s = [delta(tmp_path, [(k, start + 0x10, rec(f"{start:x}"))], start, start + 0x100)
           for start in (0x300, 0x400, 0x500)]
    m = CountingMap(tmp_path, [base, l1_lo, l1_hi, *l0s])
    assert read(m, k, 0x5FF) == (0x100, [0x180, 0x280, 0x310, 0x410, 0x510])
    assert l1_lo.file_name not in m.visited
    assert read(m, k, 0x40F) == (0x100, [0x180, 0x280, 0x310])
    assert read(m, k, 0x2FF) == (0x100, [0x180, 0x280])


def test_only_the_needed_versions_of_a_key_are_read(tmp_path: Path) -> None:
    """Thousands of versions of a size key (each an image): a read takes one."""
    k = KEYS[0]
    layer = delta(tmp_path, [(k, 0x1000 + i, img(f"v{i}")) for i in range(5000)],
                  0x1000, 0x3000)
    m = LayerMap(tmp_path, [layer])
    chain = m.get(k, Lsn(0x1000 + 4321))
    assert chain.image == f"v{4321}".encode() and chain.records == []
    reader = m._reader(layer)
    assert reader._index_block.cache_info().currsize == 1  # type: ignore[attr-defined]


def test_in_memory_sources_and_ancestors(tmp_path: Path) -> None:
    k = KEYS[2]
    parent_dir, child_dir = tmp_path / "parent", tmp_path / "child"
    parent_dir.mkdir()
    child_dir.mkdir()
    parent = LayerMap(parent_dir, [image(parent_dir, {k: img("p")}, 0x100),
                                   delta(parent_dir, [(k, 0x150, rec("p1")),
                                                      (k, 0x250, rec("p2"))], 0x101, 0x300)])
    pview = TimelineView(parent)
    child = LayerMap(child_dir, [delta(child_dir, [(k, 0x220, rec("c1"))], 0x201, 0x280)])
    mem = InMemoryLayer(Lsn(0x280))
    mem.put(k, Lsn(0x290), rec("c2"))
    view = TimelineView(child, sources=lambda: [mem], ancestor=pview, ancestor_lsn=Lsn(0x200))
    chain = view.chain(k, Lsn(0x2FF))
    # The branch point is 0x200: the parent's 0x250 is not the child's history.
    assert chain.image_lsn == 0x100
    assert [int(x) for x, _ in chain.records] == [0x150, 0x220, 0x290]
    chain = view.chain(k, Lsn(0x210))
    assert [int(x) for x, _ in chain.records] == [0x150]


def test_a_branch_image_without_the_key_hides_the_ancestors_versions(tmp_path: Path) -> None:
    """A branch's own image layer (housekeeping made it) lacks a key: the key did not
    exist on the branch then (a relation dropped after the branch point); reading through
    to the ancestor would bring it back."""
    dropped, kept = KEYS[4], KEYS[5]
    parent_dir, child_dir = tmp_path / "parent", tmp_path / "child"
    parent_dir.mkdir()
    child_dir.mkdir()
    parent = LayerMap(parent_dir, [image(parent_dir, {dropped: img("d"), kept: img("k")},
                                         0x100)])
    child = LayerMap(child_dir, [
        delta(child_dir, [(kept, 0x220, rec("k1"))], 0x201, 0x280),
        image(child_dir, {kept: img("k2")}, 0x27F)])
    view = TimelineView(child, ancestor=TimelineView(parent), ancestor_lsn=Lsn(0x200))
    assert not view.chain(dropped, Lsn(0x290)).found
    assert view.chain(kept, Lsn(0x290)).image == b"k2"
    # Below the branch's image, the ancestor still answers.
    assert view.chain(dropped, Lsn(0x210)).image == b"d"


def test_a_missing_file_reloads_and_retries(tmp_path: Path) -> None:
    k = KEYS[0]
    base = image(tmp_path, {k: img("b")}, 0x100)
    old = [delta(tmp_path, [(k, 0x110 + i * 0x100, rec(str(i)))], 0x101 + i * 0x100,
                 0x201 + i * 0x100) for i in range(3)]
    merged = delta(tmp_path, [(k, 0x110 + i * 0x100, rec(str(i))) for i in range(3)],
                   0x101, 0x401, level=LEVEL_L1)
    m = LayerMap(tmp_path, [base, *old], version=1)
    for d in old:  # compaction swapped them out and removed the files
        (tmp_path / d.file_name).unlink()
    with pytest.raises(LayerFileMissing, match="not on local disk"):
        m.get(k, Lsn(0x400))
    reloads = []

    def refresh(lsn: Lsn) -> bool:
        reloads.append(lsn)
        return m.replace([base, merged], 2)

    view = TimelineView(m, refresh=refresh)
    chain = view.chain(k, Lsn(0x400))
    assert [int(x) for x, _ in chain.records] == [0x110, 0x210, 0x310]
    assert reloads == [0x400]
    assert not m.replace([base, *old], 1), "an older map must not replace a newer one"


# ------------------------------------------------------------------------- model check

@pytest.mark.parametrize("seed", range(12))
def test_search_matches_a_model_of_the_versions(tmp_path: Path, seed: int) -> None:
    """Random histories laid out as L0s, some compacted into L1 partitions, with image
    layers of random key ranges: every read equals the model's chain."""
    rng = random.Random(seed)
    keys = [rel_block_key(REL, b) for b in range(24)]
    versions: dict[bytes, list[tuple[int, bytes]]] = {k.to_bytes(): [] for k in keys}
    base_keys = [k for k in keys if rng.random() < 0.8]
    layers = [image(tmp_path, {k: img(f"base-{k}") for k in base_keys}, 0x100)]
    for k in base_keys:
        versions[k.to_bytes()].append((0x100, img(f"base-{k}")))
    lsn = 0x101
    l0: list[tuple[int, int, list[tuple[Key, int, bytes]]]] = []
    for _flush in range(rng.randint(3, 9)):
        start = lsn
        entries = []
        for _ in range(rng.randint(1, 40)):
            lsn += rng.randint(1, 8)
            k = rng.choice(keys)
            v = rec(f"{lsn:x}", init=rng.random() < 0.15)
            entries.append((k, lsn, v))
            versions[k.to_bytes()].append((lsn, v))
        lsn += 1
        l0.append((start, lsn, entries))
        if rng.random() < 0.4:  # an image layer of a random key range at this LSN
            a, b = sorted(rng.sample(range(len(keys) + 1), 2))
            ks, ke = (keys[a] if a < len(keys) else KEY_MAX), (keys[b] if b < len(keys)
                                                                else KEY_MAX)
            if a == 0:
                ks = KEY_MIN
            at = lsn - 1
            content = {}
            for k in keys:
                if ks.to_bytes() <= k.to_bytes() < ke.to_bytes() and _exists(versions, k, at):
                    content[k] = img(f"img-{k}-{at:x}")
            layers.append(image(tmp_path, content, at, keys=(ks, ke)))
            for k in content:
                versions[k.to_bytes()].append((at, content[k]))
            for k in keys:  # a key absent from an image did not exist there
                if ks.to_bytes() <= k.to_bytes() < ke.to_bytes() and k not in content:
                    versions[k.to_bytes()].append((at, b""))
    # Compact the oldest L0s into L1 partitions over their whole LSN range.
    n = rng.randint(0, len(l0))
    if n >= 2:
        start, end = l0[0][0], l0[n - 1][1]
        merged = [e for _, _, es in l0[:n] for e in es]
        cuts = sorted(rng.sample(range(1, len(keys)), rng.randint(0, 3)))
        bounds = [KEY_MIN, *(keys[c] for c in cuts), KEY_MAX]
        for ks, ke in itertools.pairwise(bounds):
            part = [e for e in merged if ks.to_bytes() <= e[0].to_bytes() < ke.to_bytes()]
            layers.append(delta(tmp_path, part, start, end, keys=(ks, ke), level=LEVEL_L1))
        l0 = l0[n:]
    for start, end, entries in l0:
        layers.append(delta(tmp_path, entries, start, end))
    rng.shuffle(layers)
    m = LayerMap(tmp_path, layers)
    for _ in range(300):
        k = rng.choice(keys)
        at = rng.randint(0x100, lsn)
        chain = m.get(k, Lsn(at))
        want = _model_chain(versions[k.to_bytes()], at)
        got = ([] if chain.image is None else [(int(chain.image_lsn or 0), values.image(chain.image))]) \
            + [(int(x), v) for x, v in chain.records]
        assert got == want, (seed, str(k), hex(at))


def _exists(versions: dict[bytes, list[tuple[int, bytes]]], k: Key, at: int) -> bool:
    hist = _ordered(versions[k.to_bytes()], at)
    return bool(hist) and hist[-1][1] != b""


def _ordered(hist: list[tuple[int, bytes]], at: int) -> list[tuple[int, bytes]]:
    """Versions at or below ``at`` in LSN order; at one LSN an image (or the marker of
    an image layer without the key) comes after the record it includes."""
    return sorted(((x, v) for x, v in hist if x <= at),
                  key=lambda e: (e[0], e[1] == b"" or values.is_image(e[1])))


def _model_chain(hist: list[tuple[int, bytes]], at: int) -> list[tuple[int, bytes]]:
    below = _ordered(hist, at)
    for i in range(len(below) - 1, -1, -1):
        _x, v = below[i]
        if v == b"":  # an image layer without the key: nothing at or below it counts
            return below[i + 1:]
        if values.will_init(v):
            return below[i:]
    return below


# ------------------------------------------------------------------------- many keys

def _fields(chain) -> tuple:  # type: ignore[no-untyped-def]
    return (chain.key, chain.lsn, chain.image, chain.image_lsn,
            [(int(x), v) for x, v in chain.records], chain.settled)


@pytest.mark.parametrize("seed", range(8))
def test_get_many_reads_as_get_does(tmp_path: Path, seed: int) -> None:
    """Random layer maps (L0s, L1 partitions, image layers of random ranges, an in-memory
    source above them): get_many of dense runs, sparse sets and shuffled keys gives
    exactly the chains get gives key by key; a dense run opens fewer files."""
    rng = random.Random(1000 + seed)
    keys = [rel_block_key(REL, b) for b in range(40)]
    alive = [k for k in keys if rng.random() < 0.85]
    layers = [image(tmp_path, {k: img(f"base-{k}") for k in alive}, 0x100)]
    lsn = 0x101
    entries: list[tuple[Key, int, bytes]] = []
    for flush in range(rng.randint(3, 8)):
        start = lsn
        batch = []
        for _ in range(rng.randint(5, 60)):
            lsn += rng.randint(1, 6)
            batch.append((rng.choice(keys), lsn, rec(f"{lsn:x}", init=rng.random() < 0.1)))
        lsn += 1
        if flush % 3 == 2:  # an L1 partition pair over this flush's range
            mid = keys[rng.randint(1, len(keys) - 1)]
            for ks, ke in ((KEY_MIN, mid), (mid, KEY_MAX)):
                part = [e for e in batch if ks.to_bytes() <= e[0].to_bytes() < ke.to_bytes()]
                layers.append(delta(tmp_path, part, start, lsn, keys=(ks, ke), level=LEVEL_L1))
        else:
            layers.append(delta(tmp_path, batch, start, lsn))
        entries += batch
        if rng.random() < 0.5:
            a, b = sorted(rng.sample(range(len(keys)), 2))
            layers.append(image(tmp_path, {k: img(f"i-{k}-{lsn:x}") for k in keys[a:b]
                                           if rng.random() < 0.9}, lsn - 1,
                                keys=(keys[a], keys[b])))
    mem = InMemoryLayer(Lsn(lsn + 1))
    for _ in range(rng.randint(0, 30)):
        lsn += rng.randint(1, 4)
        mem.put(rng.choice(keys), Lsn(lsn), rec(f"m{lsn:x}", init=rng.random() < 0.1))
    m = CountingMap(tmp_path, layers)
    for case in range(80):
        at = Lsn(rng.randint(0x100, lsn))
        kind = case % 3
        if kind == 0:  # a dense run, as a full backup reads
            a = rng.randrange(len(keys) - 4)
            subset = keys[a:rng.randint(a + 4, len(keys))]
        elif kind == 1:  # sparse
            subset = sorted(rng.sample(keys, 6), key=Key.to_bytes)
        else:  # dense but out of order
            a = rng.randrange(len(keys) - 8)
            subset = keys[a:a + 8]
            rng.shuffle(subset)
        src = [mem] if rng.random() < 0.6 else []
        m.visited.clear()
        many = m.get_many(subset, at, src)
        many_reads = len(m.visited)
        m.visited.clear()
        one_by_one = [m.get(k, at, src) for k in subset]
        assert [_fields(c) for c in many] == [_fields(c) for c in one_by_one], (seed, case)
        if kind == 0 and len(subset) >= 8:
            assert many_reads < len(m.visited)  # files opened per run, not per key
