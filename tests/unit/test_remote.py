"""Remote storage without servers: object names with generations, index_part.json and
tenant manifests, the latest index of a timeline, ``retrying``, the local directory
backend, and layer files on demand (ranged reads, background and verified whole
downloads, eviction, the remote-download failpoint) over real layer files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pagestore import failpoints
from pagestore.errors import (
    CorruptionError,
    CorruptLayerError,
    LayerFileMissing,
    RemoteObjectNotFound,
    RemoteStorageError,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import KEY_MAX, KEY_MIN, Key, RelTag, rel_block_key
from pagestore.layers.delta import DeltaLayerReader, DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L0, LEVEL_L1, LayerDesc
from pagestore.layers.image import ImageLayerReader, ImageLayerWriter
from pagestore.layers.layermap import LayerMap
from pagestore.layers.names import TEMP_SUFFIX, delta_layer_name, image_layer_name
from pagestore.lsn import Lsn
from pagestore.remote import layout
from pagestore.remote import storage as remote_storage
from pagestore.remote.layout import (
    IndexPart,
    TenantManifest,
    TimelineMetadata,
    gen_suffix,
    parse_gen_suffix,
)
from pagestore.remote.local import LocalRemoteStorage
from pagestore.remote.ondemand import LayerFiles
from pagestore.remote.storage import RETRY_FIRST, RETRY_MAX, retrying
from pagestore.timeline import timeline_dir
from tests.fixtures.util import wait_until

REL = RelTag(1663, 5, 16384, 0)
KEYS = [rel_block_key(REL, b) for b in range(120)]
KEY_END = rel_block_key(REL, 10_000)
VALUE_SIZE = 200
# Small blocks so a layer of KEYS spans dozens of data blocks and several index blocks.
DATA_BLOCK_SIZE = 512
INDEX_BLOCK_ENTRIES = 16


# ------------------------------------------------------------------------ helpers

@pytest.fixture(autouse=True)
def _failpoints_off() -> Iterator[None]:
    yield
    failpoints.configure("remote-download", "off")
    failpoints.configure("remote-upload", "off")


class CountingStorage(LocalRemoteStorage):
    """Counts the bytes the backend itself serves to get() (whatever the caller counts)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.served = 0

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        data = super()._get(key, start, end)
        self.served += len(data)
        return data


@dataclasses.dataclass
class Env:
    workdir: Path
    storage: CountingStorage
    tenant: TenantId
    timeline: TimelineId
    tdir: Path
    opened: list[LayerFiles]

    def files(self, **kw: Any) -> LayerFiles:
        lf = LayerFiles(self.workdir, self.storage, **kw)
        self.opened.append(lf)
        return lf


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    tenant, timeline = TenantId.generate(), TimelineId.generate()
    workdir = tmp_path / "work"
    tdir = timeline_dir(workdir, tenant, timeline)
    tdir.mkdir(parents=True)
    e = Env(workdir, CountingStorage(tmp_path / "remote"), tenant, timeline, tdir, [])
    yield e
    for lf in e.opened:
        lf.close()


@dataclasses.dataclass
class Layer:
    """A real layer file written for a test: what each key must read back as."""

    desc: LayerDesc           # generation 1
    path: Path
    data: bytes               # the file's bytes
    expected: dict[Key, Any]  # per key: the image, or [(lsn, will_init, value)] of a delta

    def read(self, reader: Any, key: Key) -> Any:
        if isinstance(reader, ImageLayerReader):
            return reader.get(key)
        assert isinstance(reader, DeltaLayerReader)
        return [(int(v.lsn), v.will_init, v.value)
                for v in reader.versions(key, self.desc.lsn_end)]


def write_layer(directory: Path, kind: str = "image", *, lsn: int = 0x100,
                keys: list[Key] = KEYS, seed: int = 1) -> Layer:
    rnd = random.Random(seed)  # incompressible values: the blocks stay small
    expected: dict[Key, Any] = {}
    if kind == "image":
        with ImageLayerWriter(directory, keys[0], KEY_END, Lsn(lsn),
                              data_block_size=DATA_BLOCK_SIZE,
                              index_block_entries=INDEX_BLOCK_ENTRIES) as w:
            for k in keys:
                expected[k] = rnd.randbytes(VALUE_SIZE)
                w.put(k, expected[k])
            info = w.finish()
    else:
        with DeltaLayerWriter(directory, keys[0], KEY_END, Lsn(lsn), Lsn(lsn + 0x100),
                              data_block_size=DATA_BLOCK_SIZE,
                              index_block_entries=INDEX_BLOCK_ENTRIES) as w:
            for k in keys:
                versions = [(lsn + 0x10 * j, j == 0, rnd.randbytes(VALUE_SIZE // 2))
                            for j in range(2)]
                for at, init, value in versions:
                    w.put(k, Lsn(at), value, init)
                expected[k] = versions
            info = w.finish()
    desc = dataclasses.replace(info.desc(), generation=1)
    return Layer(desc, info.path, info.path.read_bytes(), expected)


def upload(env: Env, layer: Layer, data: bytes | None = None) -> str:
    key = layout.layer_key(env.tenant, env.timeline, layer.desc.file_name, 1)
    if data is None:
        env.storage.put_file(key, layer.path)
    else:
        env.storage.put(key, data)
    return key


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


# ------------------------------------------------------------------------ names

@pytest.mark.parametrize("generation", [1, 10, 0xABCDEF, 0xFFFF_FFFF])
def test_gen_suffix_round_trip(generation: int) -> None:
    suffix = gen_suffix(generation)
    assert len(suffix) == 9 and suffix == suffix.lower()
    assert parse_gen_suffix("index_part.json" + suffix) == ("index_part.json", generation)
    assert parse_gen_suffix(suffix) == ("", generation)


def test_gen_suffix_examples_and_bad_generations() -> None:
    assert gen_suffix(10) == "-0000000a"
    assert gen_suffix(1) == "-00000001"
    for bad in (0, -1, 2**32):
        with pytest.raises(ValueError, match="bad generation"):
            gen_suffix(bad)


@pytest.mark.parametrize("name", [
    "index_part.json",             # no suffix
    "index_part.json-0000000A",    # upper case
    "index_part.json-000000a",     # 7 digits
    "index_part.json0000000a",     # no dash
    "index_part.json-0000000g",    # not hex
    "index_part.json-0000000a.json",  # something after it
    "index_part.json-0000000a ",
    "",
])
def test_parse_gen_suffix_rejects(name: str) -> None:
    assert parse_gen_suffix(name) is None


def test_object_key_shapes() -> None:
    t, tl = TenantId.generate(), TimelineId.generate()
    name = image_layer_name(KEY_MIN, KEY_MAX, Lsn(0x100))
    assert layout.index_key(t, tl, 10) == f"tenants/{t}/timelines/{tl}/index_part.json-0000000a"
    assert layout.layer_key(t, tl, name, 0x1F) == f"tenants/{t}/timelines/{tl}/{name}-0000001f"
    assert layout.manifest_key(t, 10) == f"tenants/{t}/tenant-manifest-0000000a.json"
    assert layout.timeline_prefix(t, tl) == f"tenants/{t}/timelines/{tl}/"
    # The file name comes back from the key's last part.
    last = layout.layer_key(t, tl, name, 7).rsplit("/", 1)[1]
    assert parse_gen_suffix(last) == (name, 7)
    with pytest.raises(ValueError):
        layout.layer_key(t, tl, name, 0)  # a layer is never uploaded without a generation


# ------------------------------------------------------------------------ documents

def _layers() -> tuple[LayerDesc, ...]:
    k0, k1, k2 = KEY_MIN, rel_block_key(REL, 0), KEY_MAX
    delta = LayerDesc("delta", LEVEL_L0, k0.to_bytes(), k2.to_bytes(), Lsn(0x10), Lsn(0x20),
                      delta_layer_name(k0, k2, Lsn(0x10), Lsn(0x20)), 12345, 0xDEADBEEF,
                      generation=3)
    l1 = LayerDesc("delta", LEVEL_L1, k0.to_bytes(), k1.to_bytes(), Lsn(0x10), Lsn(0x20),
                   delta_layer_name(k0, k1, Lsn(0x10), Lsn(0x20)), 999, 1, generation=7)
    image = LayerDesc("image", LEVEL_L1, k1.to_bytes(), k2.to_bytes(), Lsn(0x30), Lsn(0x31),
                      image_layer_name(k1, k2, Lsn(0x30)), 65536, 0xFFFF_FFFF,
                      generation=0xFFFF_FFFF)
    # from_json orders by (lsn_end, file_name)
    return tuple(sorted((delta, l1, image), key=lambda d: (d.lsn_end, d.file_name)))


def _index(tenant: TenantId, timeline: TimelineId, generation: int, *,
           lsn: int = 0x1000, ancestor: bool = True) -> IndexPart:
    meta = TimelineMetadata(
        pg_version=16,
        ancestor_timeline_id=TimelineId.generate() if ancestor else None,
        ancestor_lsn=Lsn(0x0123_4567_89AB) if ancestor else None,
        min_readable_lsn=Lsn(0x100), prev_record_lsn=Lsn(lsn - 0x28),
        gc_cutoff_lsn=Lsn(0x200), pitr_cutoff_lsn=Lsn(0x180),
        wal_source="host=localhost port=5432" if ancestor else None)
    return IndexPart(tenant, timeline, generation, Lsn(lsn), meta, _layers())


@pytest.mark.parametrize("ancestor", [True, False])
def test_index_part_round_trip(ancestor: bool) -> None:
    index = _index(TenantId.generate(), TimelineId.generate(), 5, ancestor=ancestor)
    raw = index.to_json()
    back = IndexPart.from_json(raw, "test")
    assert back == index
    assert back.metadata == index.metadata and back.layers == index.layers
    # LayerDesc.generation is compare=False: compare it explicitly.
    assert [(d.file_name, d.generation) for d in back.layers] == \
        [(d.file_name, d.generation) for d in index.layers]
    assert sorted(d.generation for d in back.layers) == [3, 7, 0xFFFF_FFFF]
    assert all(d.uploaded for d in back.layers)
    assert back.to_json() == raw  # deterministic


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        _index(TenantId.generate(), TimelineId.generate(), 2).to_json())
    return doc


def _first_layer(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(iter(doc["layer_metadata"].values()))
    return entry


def _without_generation(doc: dict[str, Any]) -> None:
    del _first_layer(doc)["generation"]


def _generation_zero(doc: dict[str, Any]) -> None:
    _first_layer(doc)["generation"] = 0


def _generation_null(doc: dict[str, Any]) -> None:
    _first_layer(doc)["generation"] = None


def _bad_version(doc: dict[str, Any]) -> None:
    doc["version"] = 99


def _bad_lsn(doc: dict[str, Any]) -> None:
    doc["disk_consistent_lsn"] = "16B3748"


def _lsn_not_a_string(doc: dict[str, Any]) -> None:
    _first_layer(doc)["lsn_end"] = 32


def _bad_tenant(doc: dict[str, Any]) -> None:
    doc["tenant_id"] = "xyz"


def _no_metadata(doc: dict[str, Any]) -> None:
    del doc["metadata"]


def _bad_key_hex(doc: dict[str, Any]) -> None:
    _first_layer(doc)["key_start"] = "zz"


def _layers_not_a_table(doc: dict[str, Any]) -> None:
    doc["layer_metadata"] = ["a"]


@pytest.mark.parametrize("spoil", [
    _without_generation, _generation_zero, _generation_null, _bad_version, _bad_lsn,
    _lsn_not_a_string, _bad_tenant, _no_metadata, _bad_key_hex, _layers_not_a_table,
])
def test_index_part_from_bad_json_is_corruption(spoil: Callable[[dict[str, Any]], None]
                                                ) -> None:
    doc = _doc()
    IndexPart.from_json(json.dumps(doc).encode(), "before")  # valid before the change
    spoil(doc)
    with pytest.raises(CorruptionError, match=r"the-place: not a valid index_part\.json"):
        IndexPart.from_json(json.dumps(doc).encode(), "the-place")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'"x"', b"{}", b"\xff\xfe",
                                 b'{"version": 1}'])
def test_index_part_from_garbage_is_corruption(raw: bytes) -> None:
    with pytest.raises(CorruptionError, match=r"not a valid index_part\.json"):
        IndexPart.from_json(raw, "garbage")


def test_tenant_manifest_round_trip_and_garbage() -> None:
    m = TenantManifest(TenantId.generate(), 12, {"gc_horizon": 1024, "pitr": "1h"})
    assert TenantManifest.from_json(m.to_json(), "m") == m
    doc = json.loads(m.to_json())
    doc["config"] = [1, 2]
    for raw in (b"nope", b"[]", json.dumps(doc).encode(),
                json.dumps({"version": 2, "tenant_id": str(m.tenant_id),
                            "generation": 1}).encode()):
        with pytest.raises(CorruptionError, match="not a valid tenant manifest"):
            TenantManifest.from_json(raw, "m")


# ------------------------------------------------------------------------ lookups

def test_read_latest_index_and_generations(tmp_path: Path) -> None:
    storage = LocalRemoteStorage(tmp_path / "bucket")
    t, tl, other_tl = TenantId.generate(), TimelineId.generate(), TimelineId.generate()
    assert layout.read_latest_index(storage, t, tl) is None
    assert layout.highest_generation(storage, t) == 0
    assert layout.remote_timelines(storage, t) == []

    for gen in (1, 3, 2):
        storage.put(layout.index_key(t, tl, gen), _index(t, tl, gen, lsn=0x1000 * gen).to_json())
    latest = layout.read_latest_index(storage, t, tl)
    assert latest is not None and latest.generation == 3
    assert latest.disk_consistent_lsn == Lsn(0x3000)
    capped = layout.read_latest_index(storage, t, tl, max_generation=2)
    assert capped is not None and capped.generation == 2
    assert capped.disk_consistent_lsn == Lsn(0x2000)
    assert layout.read_latest_index(storage, t, tl, max_generation=0) is None
    assert layout.read_latest_index(storage, t, other_tl) is None
    assert layout.highest_generation(storage, t) == 3

    # Manifests count too; layers do not; another tenant's objects do not.
    storage.put(layout.manifest_key(t, 7), TenantManifest(t, 7).to_json())
    assert layout.highest_generation(storage, t) == 7
    storage.put(layout.layer_key(t, tl, image_layer_name(KEY_MIN, KEY_MAX, Lsn(1)), 50), b"x")
    other_tenant = TenantId.generate()
    storage.put(layout.manifest_key(other_tenant, 40), TenantManifest(other_tenant, 40).to_json())
    storage.put(layout.index_key(other_tenant, tl, 41), _index(other_tenant, tl, 41).to_json())
    assert layout.highest_generation(storage, t) == 7
    storage.put(layout.index_key(t, other_tl, 9), _index(t, other_tl, 9).to_json())
    assert layout.highest_generation(storage, t) == 9
    assert layout.latest_manifest_generation(storage, t) == 7
    manifest = layout.read_latest_manifest(storage, t)
    assert manifest is not None and manifest.generation == 7

    # remote_timelines: those with an index, not one that holds only a layer.
    layer_only = TimelineId.generate()
    storage.put(layout.layer_key(t, layer_only, image_layer_name(KEY_MIN, KEY_MAX, Lsn(1)), 1),
                b"x")
    assert layout.remote_timelines(storage, t) == sorted([tl, other_tl])
    assert layout.remote_timelines(storage, other_tenant) == [tl]


def test_read_latest_index_refuses_an_index_naming_another_timeline(tmp_path: Path) -> None:
    storage = LocalRemoteStorage(tmp_path / "bucket")
    t, tl = TenantId.generate(), TimelineId.generate()
    storage.put(layout.index_key(t, tl, 1), _index(t, tl, 1).to_json())
    storage.put(layout.index_key(t, tl, 2), _index(t, TimelineId.generate(), 2).to_json())
    with pytest.raises(CorruptionError, match="names tenant"):
        layout.read_latest_index(storage, t, tl)
    older = layout.read_latest_index(storage, t, tl, max_generation=1)
    assert older is not None and older.generation == 1
    storage.put(layout.index_key(t, tl, 3), b"{broken")
    with pytest.raises(CorruptionError, match=r"index_part\.json-00000003"):
        layout.read_latest_index(storage, t, tl)


# ------------------------------------------------------------------------ retrying

def test_retrying_retries_transient_errors_with_doubling_delays() -> None:
    delays: list[float] = []
    calls = 0

    def op() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RemoteStorageError(f"flaky {calls}")
        return "done"

    assert retrying(op, "op", sleep=delays.append) == "done"
    assert calls == 3
    assert delays == [RETRY_FIRST, RETRY_FIRST * 2]


def test_retrying_gives_up_after_attempts_with_the_last_error() -> None:
    delays: list[float] = []
    errors: list[RemoteStorageError] = []

    def op() -> None:
        errors.append(RemoteStorageError(f"failure {len(errors) + 1}"))
        raise errors[-1]

    with pytest.raises(RemoteStorageError) as excinfo:
        retrying(op, "op", attempts=8, sleep=delays.append)
    assert len(errors) == 8
    assert excinfo.value is errors[-1]
    assert len(delays) == 7  # no wait after the last attempt
    for a, b in itertools.pairwise(delays):
        assert b == min(a * 2, RETRY_MAX)
    assert delays[0] == RETRY_FIRST and delays[-1] == RETRY_MAX  # doubles, then capped
    assert max(delays) <= RETRY_MAX


@pytest.mark.parametrize("error", [
    RemoteStorageError("access denied", permanent=True),
    RemoteObjectNotFound("no such object"),  # permanent unless said otherwise
])
def test_retrying_does_not_retry_permanent_errors(error: RemoteStorageError) -> None:
    delays: list[float] = []
    calls = 0

    def op() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(RemoteStorageError) as excinfo:
        retrying(op, "op", sleep=delays.append)
    assert excinfo.value is error and calls == 1 and delays == []


def test_retrying_does_not_retry_other_exceptions() -> None:
    delays: list[float] = []
    calls = 0

    def op() -> None:
        nonlocal calls
        calls += 1
        raise OSError("not a storage error")

    with pytest.raises(OSError, match="not a storage error"):
        retrying(op, "op", sleep=delays.append)
    assert calls == 1 and delays == []


# ------------------------------------------------------------------------ local backend

def test_local_remote_storage_basics(tmp_path: Path) -> None:
    storage = LocalRemoteStorage(tmp_path / "bucket")
    storage.check()
    storage.put("a/b/one", b"0123456789")
    src = tmp_path / "src"
    src.write_bytes(b"file contents")
    storage.put_file("a/two", src)
    assert storage.get("a/b/one") == b"0123456789"
    assert storage.get("a/b/one", 2, 5) == b"234"
    with pytest.raises(RemoteStorageError, match=r"returned 2 bytes"):
        storage.get("a/b/one", 8, 12)  # a range past the end is short: an error
    for start, end in ((5, 5), (5, 2), (None, 3), (-1, 2)):
        with pytest.raises(ValueError, match="bad byte range"):
            storage.get("a/b/one", start, end)
    with pytest.raises(RemoteObjectNotFound):
        storage.get("a/missing")
    head = storage.head("a/two")
    assert head is not None and head.size == len(b"file contents")
    assert storage.head("a/missing") is None
    # A temporary file of an interrupted put is not an object.
    (tmp_path / "bucket" / "a" / "three.1234.___remote_temp").write_bytes(b"partial")
    assert [(o.key, o.size) for o in storage.list("a/")] == [("a/b/one", 10), ("a/two", 13)]
    assert [o.key for o in storage.list("a/t")] == ["a/two"]
    assert storage.list("zzz/") == []
    dest = tmp_path / "dest"
    assert storage.download("a/two", dest) == 13 and dest.read_bytes() == b"file contents"
    storage.delete("a/two")
    storage.delete("a/two")  # a missing object is fine
    assert storage.head("a/two") is None
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(ValueError, match="bad remote key"):
            storage.put(bad, b"x")


def test_upload_failpoint(tmp_path: Path) -> None:
    storage = LocalRemoteStorage(tmp_path / "bucket")
    failpoints.configure("remote-upload", "1*return")
    with pytest.raises(RemoteStorageError, match="remote-upload") as excinfo:
        storage.put("k", b"v")
    assert not excinfo.value.permanent
    assert storage.head("k") is None
    storage.put("k", b"v")  # the failpoint fired once only
    assert storage.get("k") == b"v"


# ------------------------------------------------------------------------ layers on demand

@pytest.mark.parametrize("kind", ["image", "delta"])
def test_ranged_reads_of_a_remote_layer(env: Env, kind: str) -> None:
    layer = write_layer(env.tdir, kind)
    size = len(layer.data)
    upload(env, layer)
    layer.path.unlink()
    files = env.files(ranged=True, download_after=10**6)
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        # Opening reads the header and the summary only.
        assert files.stats.ranged_gets == 2
        key = KEYS[len(KEYS) // 2]
        assert layer.read(reader, key) == layer.expected[key]
        assert files.stats.ranged_gets > 2
        assert files.stats.ranged_bytes < size // 4, (files.stats, size)
        assert env.storage.served == files.stats.ranged_bytes
        for k in KEYS:
            assert layer.read(reader, k) == layer.expected[k]
        absent = rel_block_key(REL, 5000)
        assert layer.read(reader, absent) in (None, [])
        assert files.stats.downloads == 0 and files.stats.download_bytes == 0
        assert files.stats.bytes_downloaded == files.stats.ranged_bytes
        assert not layer.path.exists()
        assert temp_files(env.tdir) == []
    finally:
        reader.close()


def test_open_without_ranged_reads_downloads_the_whole_file(env: Env) -> None:
    layer = write_layer(env.tdir)
    upload(env, layer)
    layer.path.unlink()
    files = env.files(ranged=False)
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        assert layer.path.read_bytes() == layer.data
        assert files.stats.downloads == 1 and files.stats.download_bytes == len(layer.data)
        for k in KEYS[:10]:
            assert layer.read(reader, k) == layer.expected[k]
        assert files.stats.ranged_gets == 0
    finally:
        reader.close()


def test_a_layer_read_often_is_downloaded_in_the_background(env: Env) -> None:
    layer = write_layer(env.tdir, "delta")
    upload(env, layer)
    layer.path.unlink()
    files = env.files(ranged=True, download_after=2)
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        assert layer.read(reader, KEYS[0]) == layer.expected[KEYS[0]]
        assert files.stats.ranged_gets >= 2
        # The reads scheduled a download; wait for the file, then for the download to
        # have finished (the readers switch to the local file at its end).
        wait_until(layer.path.exists, timeout=30, interval=0.01, what="background download")
        fut = files.download(env.tenant, env.timeline, layer.desc)
        assert fut.result(timeout=30) == layer.path
        assert files.stats.downloads == 1  # the background one; no second download
        assert layer.path.read_bytes() == layer.data
        assert temp_files(env.tdir) == []
        gets, ranged_bytes = files.stats.ranged_gets, files.stats.ranged_bytes
        for k in KEYS[1:]:  # blocks the reader has not cached
            assert layer.read(reader, k) == layer.expected[k]
        assert files.stats.ranged_gets == gets and files.stats.ranged_bytes == ranged_bytes
    finally:
        reader.close()


def _corrupted(data: bytes, at: int) -> bytes:
    spoiled = bytearray(data)
    spoiled[at] ^= 0x5A
    return bytes(spoiled)


def test_a_corrupt_remote_copy_is_never_downloaded_into_place(env: Env) -> None:
    layer = write_layer(env.tdir)
    spoiled = _corrupted(layer.data, len(layer.data) // 2)
    assert len(spoiled) == len(layer.data)
    upload(env, layer, spoiled)
    layer.path.unlink()
    files = env.files()
    for _ in range(2):  # a failed download is not remembered as a success
        with pytest.raises(CorruptLayerError, match="CRC32C") as excinfo:
            files.download(env.tenant, env.timeline, layer.desc).result(timeout=30)
        assert f"{layer.desc.checksum:08X}" in str(excinfo.value)
        assert not layer.path.exists()
        assert temp_files(env.tdir) == []
    with pytest.raises(CorruptLayerError):
        files.open(env.tenant, env.timeline, layer.desc, whole=True)
    assert not layer.path.exists() and temp_files(env.tdir) == []
    assert files.stats.downloads == 0


def test_a_background_download_of_a_corrupt_copy_never_lands(env: Env) -> None:
    # The data block read below is intact; one near the end of the data is not: the
    # ranged reads succeed, the background download they trigger must be refused.
    layer = write_layer(env.tdir)
    spoiled = _corrupted(layer.data, len(layer.data) * 2 // 3)
    upload(env, layer, spoiled)
    layer.path.unlink()
    files = env.files(ranged=True, download_after=2)
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        assert layer.read(reader, KEYS[0]) == layer.expected[KEYS[0]]
        assert files.stats.ranged_gets >= 2
        wait_until(lambda: not files._downloads, timeout=30, interval=0.01,
                   what="the background download over")
        assert not layer.path.exists() and temp_files(env.tdir) == []
        assert files.stats.downloads == 0
    finally:
        reader.close()


def test_a_remote_copy_of_the_wrong_size_is_refused(env: Env) -> None:
    layer = write_layer(env.tdir)
    upload(env, layer, layer.data[:-10])
    layer.path.unlink()
    files = env.files()
    with pytest.raises(CorruptLayerError,
                       match=f"downloaded {len(layer.data) - 10} bytes.*{len(layer.data)} bytes"):
        files.download(env.tenant, env.timeline, layer.desc).result(timeout=30)
    assert not layer.path.exists() and temp_files(env.tdir) == []


def test_eviction_unlinks_uploaded_layers_and_readers_go_remote(env: Env) -> None:
    a = write_layer(env.tdir, "image", lsn=0x100, seed=1)
    b = write_layer(env.tdir, "delta", lsn=0x200, seed=2)
    c = write_layer(env.tdir, "image", lsn=0x300, seed=3)  # never uploaded
    upload(env, a)
    upload(env, b)
    files = env.files(ranged=True, download_after=10**6)
    reader = files.open(env.tenant, env.timeline, a.desc)
    try:
        assert a.read(reader, KEYS[0]) == a.expected[KEYS[0]]
        assert files.stats.ranged_gets == 0  # local
        total = len(a.data) + len(b.data) + len(c.data)
        assert files.evict_to(total, {a.path, b.path, c.path}) == []  # fits already

        evicted = files.evict_to(0, {a.path, b.path})
        assert sorted(evicted) == sorted([a.path, b.path])
        assert not a.path.exists() and not b.path.exists()
        assert c.path.exists()  # no remote copy: never evicted, even over budget
        assert files.stats.evictions == 2
        assert files.stats.evicted_bytes == len(a.data) + len(b.data)
        assert files.evict_to(0, {a.path, b.path}) == []

        # The open reader goes on with ranged reads.
        for k in KEYS[1:]:
            assert a.read(reader, k) == a.expected[k]
        assert files.stats.ranged_gets > 0
        assert not a.path.exists()
    finally:
        reader.close()


def test_eviction_takes_the_least_recently_used_first(env: Env) -> None:
    a = write_layer(env.tdir, "image", lsn=0x100, seed=1)
    b = write_layer(env.tdir, "image", lsn=0x200, seed=2)
    upload(env, a)
    upload(env, b)
    files = env.files()
    files.touch(a.path)
    files.touch(b.path)
    files.touch(a.path)  # a is the more recently used
    budget = len(a.data) + len(b.data) - 1
    assert files.evict_to(budget, {a.path, b.path}) == [b.path]
    assert a.path.exists() and not b.path.exists()


def test_ranged_reads_retry_through_the_download_failpoint(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_storage, "RETRY_FIRST", 0.001)
    layer = write_layer(env.tdir)
    upload(env, layer)
    layer.path.unlink()
    files = env.files(ranged=True, download_after=10**6)

    failpoints.configure("remote-download", "2*return")
    before = failpoints.hits("remote-download")
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        assert failpoints.hits("remote-download") == before + 2
        assert layer.read(reader, KEYS[7]) == layer.expected[KEYS[7]]
    finally:
        reader.close()

    failpoints.configure("remote-download", "20*return")
    before = failpoints.hits("remote-download")
    with pytest.raises(RemoteStorageError, match="failpoint remote-download") as excinfo:
        files.open(env.tenant, env.timeline, layer.desc)
    assert not excinfo.value.permanent
    assert failpoints.hits("remote-download") == before + 6  # retrying's attempts
    failpoints.configure("remote-download", "off")

    # A whole download retries too.
    failpoints.configure("remote-download", "2*return")
    fut = files.download(env.tenant, env.timeline, layer.desc)
    assert fut.result(timeout=30) == layer.path
    assert layer.path.read_bytes() == layer.data


def test_each_service_sweeps_only_its_own_leftover_downloads(env: Env) -> None:
    layer = write_layer(env.tdir)
    upload(env, layer)
    layer.path.unlink()
    mine = env.tdir / f"{layer.path.name}.download_pageread-0badf00d.___temp"
    theirs = env.tdir / f"{layer.path.name}.download_ingest-0badf00d.___temp"
    other = env.tdir / f"{layer.path.name}.housekeeping-0badf00d.___temp"
    for p in (mine, theirs, other):
        p.write_bytes(b"half a download")
    pageread = env.files(owner="pageread")
    assert pageread.sweep() == 1
    assert not mine.exists() and theirs.exists() and other.exists()
    # Its own downloads carry its tag while they run, and leave nothing behind.
    assert pageread.download(env.tenant, env.timeline, layer.desc).result(timeout=30) == layer.path
    assert sorted(temp_files(env.tdir)) == sorted([theirs.name, other.name])


def _map_read(m: LayerMap, layer: Layer, desc: LayerDesc, key: Key) -> Any:
    """Read ``key`` through the map's cache of open readers (what every read uses)."""
    return layer.read(m._reader(desc), key)


def test_a_map_reader_opened_before_the_upload_reads_remotely_after_eviction(env: Env) -> None:
    layer = write_layer(env.tdir, "image", lsn=0x100)
    not_uploaded = dataclasses.replace(layer.desc, generation=0)
    files = env.files(ranged=True, download_after=10**6)
    m = LayerMap(env.tdir, [not_uploaded], version=1,
                 opener=files.opener(env.tenant, env.timeline))
    try:
        assert _map_read(m, layer, not_uploaded, KEYS[0]) == layer.expected[KEYS[0]]
        # Housekeeping uploads it and bumps the map's version; pageread evicts it.
        upload(env, layer)
        assert m.replace([layer.desc], 2)
        assert files.evict_to(0, {layer.path}) == [layer.path]
        assert _map_read(m, layer, layer.desc, KEYS[5]) == layer.expected[KEYS[5]]
        assert files.stats.ranged_gets > 0
    finally:
        m.close()


def test_a_layer_gone_from_the_bucket_is_a_missing_layer(env: Env) -> None:
    layer = write_layer(env.tdir, "image", lsn=0x100)
    key = upload(env, layer)
    layer.path.unlink()
    files = env.files(ranged=True, download_after=10**6)
    reader = files.open(env.tenant, env.timeline, layer.desc)
    try:
        env.storage.delete(key)  # compaction replaced it; the next index upload deleted it
        with pytest.raises(LayerFileMissing, match="neither on local disk nor in remote"):
            layer.read(reader, KEYS[-1])
        with pytest.raises(LayerFileMissing):
            files.open(env.tenant, env.timeline, layer.desc, whole=True)
    finally:
        reader.close()
