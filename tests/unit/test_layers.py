"""Layer files: names, round trips of random contents, lookups at boundaries, refused
puts, atomic appearance, and corruption that must be an error, never a wrong value."""

from __future__ import annotations

import os
import re
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagestore.errors import CorruptLayerError
from pagestore.keys import KEY_MAX, KEY_MIN, Key, RelTag, rel_block_key
from pagestore.layers import format as layer_format
from pagestore.layers.delta import DeltaLayerReader, DeltaLayerWriter, DeltaValue
from pagestore.layers.format import (
    CRC,
    DATA_BLOCK_REF,
    HEADER,
    HEADER_BLOCK_SIZE,
    INDEX_ENTRY,
    crc32c_combine,
    file_checksum,
)
from pagestore.layers.image import ImageLayerReader, ImageLayerWriter
from pagestore.layers.names import (
    LayerKind,
    LayerName,
    delta_layer_name,
    image_layer_name,
    is_temp_layer_file_name,
    parse_layer_name,
)
from pagestore.lsn import U64_MAX, Lsn

REL = RelTag(1663, 5, 16384)

keys_st = st.builds(Key, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
                    st.integers(0, 3), st.integers(0, 3), st.integers(0, 2**32 - 1))
values_st = st.one_of(st.binary(max_size=300),
                      st.integers(0, 3000).map(bytes),  # compressible
                      st.binary(min_size=1, max_size=8).map(lambda b: b * 500))
block_size_st = st.sampled_from([1, 64, 700, 65536])
index_entries_st = st.sampled_from([1, 2, 3, 1000])


def _succ(key: Key) -> Key:
    return Key.from_bytes((int.from_bytes(key.to_bytes()) + 1).to_bytes(18))


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ----------------------------------------------------------------------------- names

@given(keys_st, keys_st, st.integers(0, U64_MAX - 1), st.integers(1, U64_MAX))
def test_layer_names_round_trip(a: Key, b: Key, lsn1: int, lsn2: int) -> None:
    if a == b:
        b = _succ(a)
    ks, ke = min(a, b), max(a, b)
    lo, hi = min(lsn1, lsn2), max(lsn1, lsn2)
    if lo == hi:
        hi += 1
    name = delta_layer_name(ks, ke, Lsn(lo), Lsn(hi))
    assert parse_layer_name(name) == LayerName(LayerKind.DELTA, ks, ke, Lsn(lo), Lsn(hi))
    assert parse_layer_name(name).file_name == name
    image = image_layer_name(ks, ke, Lsn(lsn1))
    parsed = parse_layer_name(image)
    assert parsed == LayerName(LayerKind.IMAGE, ks, ke, Lsn(lsn1), Lsn(lsn1 + 1))
    assert parsed.lsn == lsn1 and str(parsed) == image
    assert parsed.kind == "image" and parse_layer_name(name).kind == "delta"


def test_layer_name_format_is_neons() -> None:
    k1, k2 = rel_block_key(REL, 0), rel_block_key(REL, 100)
    assert delta_layer_name(k1, k2, Lsn(0x16B3748), Lsn(0x1_0000_0000)) == (
        "000000067F00000005000040000000000000-000000067F00000005000040000000000064"
        "__00000000016B3748-0000000100000000")
    assert image_layer_name(KEY_MIN, KEY_MAX, Lsn(0x20)) == (
        "0" * 36 + "-" + "F" * 36 + "__0000000000000020")


KS, KE = "0" * 36, "0" * 35 + "1"


@pytest.mark.parametrize("name", [
    "",
    f"{KS}-{KE}",
    f"{KS}-{KE}__{'0' * 14}1",                        # short LSN
    f"{KS}-{KE}__{'0' * 16}-{'0' * 16}",              # empty LSN range
    f"{KS}-{KE}__{'0' * 15}2-{'0' * 15}1",            # reversed LSN range
    f"{KE}-{KS}__{'0' * 16}",                         # reversed key range
    f"{KS}-{KS}__{'0' * 16}",                         # empty key range
    f"{KS}-{'0' * 35}a__{'0' * 16}",                  # lower case
    f"{KS}-{KE}__{'F' * 16}",                         # image at LSN 2^64-1
    f"{KS}-{KE}__{'0' * 16}-{'0' * 15}1-v1-00000001",  # generation suffix
    f"{KS}-{KE}__{'0' * 16}.abcd1234.___temp",
    f" {KS}-{KE}__{'0' * 16}",
    f"{KS}-{KE}__{'0' * 16}\n",
    f"{KS}_{KE}__{'0' * 16}",
    f"{KS}-{KE}__{'G' * 16}",
])
def test_bad_layer_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="layer file name"):
        parse_layer_name(name)


def test_name_builders_refuse_empty_ranges() -> None:
    k = rel_block_key(REL, 1)
    with pytest.raises(ValueError):
        delta_layer_name(k, k, Lsn(1), Lsn(2))
    with pytest.raises(ValueError):
        delta_layer_name(KEY_MIN, k, Lsn(2), Lsn(2))
    with pytest.raises(ValueError):
        image_layer_name(k, KEY_MIN, Lsn(2))
    with pytest.raises(ValueError):
        image_layer_name(KEY_MIN, k, Lsn.MAX)
    with pytest.raises(ValueError):
        _ = parse_layer_name(delta_layer_name(KEY_MIN, k, Lsn(1), Lsn(2))).lsn


# ------------------------------------------------------------------------- checksums

@given(st.binary(max_size=5000), st.binary(max_size=5000))
def test_crc32c_combine(a: bytes, b: bytes) -> None:
    assert crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)


def test_crc32c_combine_long_tail() -> None:
    a, b = b"header", bytes(3 * 1024 * 1024 + 17)
    assert crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)


# ------------------------------------------------------------------------ round trips

Versions = dict[Key, list[tuple[int, bool, bytes]]]


@st.composite
def delta_contents(draw: st.DrawFn) -> tuple[Key, Key, int, int, Versions]:
    keys = sorted(draw(st.sets(keys_st, max_size=12)))
    lsn_start = draw(st.integers(0, 2**40))
    span = draw(st.integers(1, 2**20))
    contents: Versions = {}
    for key in keys:
        lsns = sorted(draw(st.sets(st.integers(lsn_start, lsn_start + span - 1),
                                   min_size=1, max_size=8)))
        contents[key] = [(lsn, draw(st.booleans()), draw(values_st)) for lsn in lsns]
    key_start = keys[0] if keys and draw(st.booleans()) else KEY_MIN
    key_end = _succ(keys[-1]) if keys and draw(st.booleans()) else KEY_MAX
    return key_start, key_end, lsn_start, lsn_start + span, contents


def _write_delta(directory: Path, key_start: Key, key_end: Key, lsn_start: int, lsn_end: int,
                 contents: Versions, **kwargs: int) -> layer_format.LayerInfo:
    with DeltaLayerWriter(directory, key_start, key_end, Lsn(lsn_start), Lsn(lsn_end),
                          **kwargs) as writer:
        for key in sorted(contents):
            for lsn, will_init, value in contents[key]:
                writer.put(key, Lsn(lsn), value, will_init)
        return writer.finish()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delta_contents(), block_size_st, index_entries_st, st.data())
def test_delta_layer_round_trip(contents: tuple[Key, Key, int, int, Versions],
                                block_size: int, index_entries: int, data: st.DataObject) -> None:
    key_start, key_end, lsn_start, lsn_end, versions = contents
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        info = _write_delta(directory, key_start, key_end, lsn_start, lsn_end, versions,
                            data_block_size=block_size, index_block_entries=index_entries)
        assert _files(directory) == [info.file_name]
        assert info.path == directory / info.file_name
        assert info.kind == LayerKind.DELTA
        assert parse_layer_name(info.file_name) == LayerName(
            LayerKind.DELTA, key_start, key_end, Lsn(lsn_start), Lsn(lsn_end))
        assert info.file_size == info.path.stat().st_size
        assert info.checksum == file_checksum(info.path)
        expected = [(k, lsn, wi, v) for k in sorted(versions) for lsn, wi, v in versions[k]]
        assert info.entry_count == len(expected)
        with DeltaLayerReader(info.path) as reader:
            assert (reader.key_start, reader.key_end) == (key_start, key_end)
            assert (reader.lsn_start, reader.lsn_end) == (lsn_start, lsn_end)
            assert reader.entry_count == len(expected)
            assert reader.key_count == len(versions)
            assert list(reader.iter_all()) == expected
            assert list(reader.keys()) == sorted(versions)
            for key, vs in versions.items():
                cuts = [lsn_start, lsn_end, Lsn.MAX, *(lsn for lsn, _, _ in vs),
                        *(lsn + 1 for lsn, _, _ in vs),
                        data.draw(st.integers(lsn_start, lsn_end))]
                for cut in cuts:
                    assert reader.versions(key, Lsn(cut)) == [
                        DeltaValue(Lsn(lsn), wi, v) for lsn, wi, v in vs if lsn < cut]
            absent = data.draw(keys_st)
            if absent not in versions:
                assert reader.versions(absent, Lsn.MAX) == []
            reader.verify()


@st.composite
def image_contents(draw: st.DrawFn) -> tuple[Key, Key, int, dict[Key, bytes]]:
    keys = sorted(draw(st.sets(keys_st, max_size=30)))
    images = {key: draw(values_st) for key in keys}
    key_start = keys[0] if keys and draw(st.booleans()) else KEY_MIN
    key_end = _succ(keys[-1]) if keys and draw(st.booleans()) else KEY_MAX
    return key_start, key_end, draw(st.integers(0, U64_MAX - 1)), images


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_contents(), block_size_st, index_entries_st, st.lists(keys_st, max_size=10))
def test_image_layer_round_trip(contents: tuple[Key, Key, int, dict[Key, bytes]],
                                block_size: int, index_entries: int, probes: list[Key]) -> None:
    key_start, key_end, lsn, images = contents
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with ImageLayerWriter(directory, key_start, key_end, Lsn(lsn),
                              data_block_size=block_size,
                              index_block_entries=index_entries) as writer:
            for key in sorted(images):
                writer.put(key, images[key])
            info = writer.finish()
        assert _files(directory) == [info.file_name]
        assert parse_layer_name(info.file_name) == LayerName(
            LayerKind.IMAGE, key_start, key_end, Lsn(lsn), Lsn(lsn + 1))
        assert (info.lsn_start, info.lsn_end, info.entry_count) == (lsn, lsn + 1, len(images))
        assert info.checksum == file_checksum(info.path)
        with ImageLayerReader(info.path) as reader:
            assert reader.lsn == lsn and reader.entry_count == len(images)
            assert list(reader.iter_all()) == sorted(images.items())
            assert list(reader.keys()) == sorted(images)
            for key, value in images.items():
                assert reader.get(key) == value
            for key in probes:
                assert reader.get(key) == images.get(key)


def test_empty_layers(tmp_path: Path) -> None:
    delta = _write_delta(tmp_path, KEY_MIN, KEY_MAX, 10, 20, {})
    with DeltaLayerReader(delta.path) as reader:
        assert reader.entry_count == 0 and reader.key_count == 0
        assert reader.versions(rel_block_key(REL, 0), Lsn.MAX) == []
        assert list(reader.iter_all()) == [] and list(reader.keys()) == []
    with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(10)) as writer:
        image = writer.finish()
    with ImageLayerReader(image.path) as reader:
        assert reader.get(KEY_MIN) is None and list(reader.iter_all()) == []
    assert delta.entry_count == image.entry_count == 0


def test_versions_boundaries(tmp_path: Path) -> None:
    first, middle, last = (rel_block_key(REL, b) for b in (0, 5, 9))
    contents: Versions = {
        first: [(10, True, b"f10"), (20, False, b"f20")],
        middle: [(lsn, lsn == 14, b"m%d" % lsn) for lsn in range(10, 17)],  # spans blocks
        last: [(39, True, b"l39")],
    }
    info = _write_delta(tmp_path, first, _succ(last), 10, 40, contents,
                        data_block_size=4, index_block_entries=2)
    with DeltaLayerReader(info.path) as r:
        assert r.header.index_block_count == 5 and r.header.data_block_count == 5
        assert r.versions(first, Lsn(10)) == []
        assert r.versions(first, Lsn(11)) == [DeltaValue(Lsn(10), True, b"f10")]
        assert r.versions(first, Lsn(20)) == [DeltaValue(Lsn(10), True, b"f10")]
        assert [v.lsn for v in r.versions(first, Lsn(21))] == [10, 20]
        assert [v.lsn for v in r.versions(middle, Lsn(15))] == [10, 11, 12, 13, 14]
        assert [v.will_init for v in r.versions(middle, Lsn(15))] == [False] * 4 + [True]
        assert [v.value for v in r.versions(middle, Lsn.MAX)] == [
            b"m%d" % lsn for lsn in range(10, 17)]
        assert r.versions(last, Lsn(39)) == []
        assert r.versions(last, Lsn(40)) == [DeltaValue(Lsn(39), True, b"l39")]
        assert r.versions(last, Lsn.MAX) == [DeltaValue(Lsn(39), True, b"l39")]
        for absent in (KEY_MIN, rel_block_key(REL, 1), rel_block_key(REL, 6), _succ(last),
                       KEY_MAX):
            assert r.versions(absent, Lsn.MAX) == []


def test_large_values_get_blocks_of_their_own(tmp_path: Path) -> None:
    big = os.urandom(1024 * 1024)        # incompressible: stored raw
    slru = bytes(256 * 1024)             # compressible: stored with zstd
    pages = [os.urandom(100) + bytes(8092) for _ in range(40)]
    with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(100)) as writer:
        for blkno, page in enumerate(pages):
            writer.put(rel_block_key(REL, blkno), page)
        writer.put(rel_block_key(REL, 1000), big)
        writer.put(rel_block_key(REL, 1001), pages[0])
        writer.put(rel_block_key(REL, 1002), slru)
        info = writer.finish()
    raw_total = sum(map(len, pages)) + len(big) + len(pages[0]) + len(slru)
    assert info.file_size < raw_total - 256 * 1024  # the pages and the zeros compressed
    with ImageLayerReader(info.path) as r:
        # 40 pages fill 5 blocks (8 pages make 64 KiB), then the big value alone, the
        # page after it, the zeros alone
        assert r.header.data_block_count == 8
        assert r.get(rel_block_key(REL, 1000)) == big
        assert r.get(rel_block_key(REL, 1002)) == slru
        assert [r.get(rel_block_key(REL, b)) for b in range(40)] == pages
        refs = [DATA_BLOCK_REF.unpack_from(r._block_refs, i * DATA_BLOCK_REF.size)
                for i in range(8)]
        assert refs[5][1] > len(big) and refs[7][1] < 1024


def test_concurrent_lookups(tmp_path: Path) -> None:
    contents: Versions = {rel_block_key(REL, b): [(lsn, lsn == 1, os.urandom(64) * 20)
                                                  for lsn in range(1, 6)]
                          for b in range(500)}
    info = _write_delta(tmp_path, KEY_MIN, KEY_MAX, 1, 10, contents,
                        data_block_size=4096, index_block_entries=50)
    with DeltaLayerReader(info.path, data_cache_blocks=4, index_cache_blocks=2) as r:
        def check(key: Key) -> bool:
            return r.versions(key, Lsn(4)) == [DeltaValue(Lsn(lsn), wi, v)
                                              for lsn, wi, v in contents[key][:3]]
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(check, list(contents) * 4))


def test_reader_close(tmp_path: Path) -> None:
    info = _write_delta(tmp_path, KEY_MIN, KEY_MAX, 1, 10, {KEY_MIN: [(1, True, b"x")]})
    with DeltaLayerReader(info.path) as r:
        assert r.versions(KEY_MIN, Lsn(2))[0].value == b"x"
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.versions(KEY_MIN, Lsn(2))


# ----------------------------------------------------------------------- writer rules

def test_delta_writer_refuses_bad_puts(tmp_path: Path) -> None:
    k1, k2, k3 = (rel_block_key(REL, b) for b in (1, 2, 3))
    with DeltaLayerWriter(tmp_path, k1, k3, Lsn(100), Lsn(200)) as w:
        w.put(k2, Lsn(150), b"a", True)
        refused = [
            (k1, 160, "not after"),      # an earlier key
            (k2, 149, "not after"),      # an earlier LSN of the same key
            (k2, 150, "duplicate"),      # the same (key, lsn)
            (k3, 150, "key range"),      # key_end is exclusive
            (rel_block_key(REL, 0), 150, "key range"),
            (k2, 99, "LSN range"),
            (k2, 200, "LSN range"),      # lsn_end is exclusive
        ]
        for key, lsn, message in refused:
            with pytest.raises(ValueError, match=message):
                w.put(key, Lsn(lsn), b"bad", False)
        w.put(k2, Lsn(151), b"b", False)   # a refused put changed nothing
        info = w.finish()
        with pytest.raises(ValueError, match="finished"):
            w.put(k2, Lsn(152), b"c", False)
    with DeltaLayerReader(info.path) as r:
        assert list(r.iter_all()) == [(k2, 150, True, b"a"), (k2, 151, False, b"b")]
    for args in ((k1, k1, 1, 2), (k2, k1, 1, 2), (k1, k2, 2, 2), (k1, k2, 3, 2)):
        with pytest.raises(ValueError):
            DeltaLayerWriter(tmp_path, args[0], args[1], Lsn(args[2]), Lsn(args[3]))
    assert _files(tmp_path) == [info.file_name]


def test_image_writer_refuses_bad_puts(tmp_path: Path) -> None:
    k1, k2, k3 = (rel_block_key(REL, b) for b in (1, 2, 3))
    with ImageLayerWriter(tmp_path, k1, k3, Lsn(100)) as w:
        w.put(k2, b"a")
        with pytest.raises(ValueError, match="duplicate"):
            w.put(k2, b"again")
        with pytest.raises(ValueError, match="not after"):
            w.put(k1, b"earlier")
        with pytest.raises(ValueError, match="key range"):
            w.put(rel_block_key(REL, 0), b"before key_start")
        with pytest.raises(ValueError, match="key range"):
            w.put(k3, b"at key_end")
        w.abort()
        with pytest.raises(ValueError, match="aborted"):
            w.put(_succ(k2), b"b")
    assert _files(tmp_path) == []


def test_abort_and_exceptions_leave_no_file(tmp_path: Path) -> None:
    w = DeltaLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1), Lsn(10))
    w.put(KEY_MIN, Lsn(1), b"x" * 100_000, True)
    assert len(_files(tmp_path)) == 1 and is_temp_layer_file_name(_files(tmp_path)[0])
    w.abort()
    w.abort()
    assert _files(tmp_path) == []
    with pytest.raises(RuntimeError, match="boom"):
        with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1)) as iw:
            iw.put(KEY_MIN, b"x")
            raise RuntimeError("boom")
    assert _files(tmp_path) == []
    with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1)) as iw:
        iw.put(KEY_MIN, b"x")   # leaving without finish() discards the file
    assert _files(tmp_path) == []


def test_file_appears_only_when_finished(tmp_path: Path) -> None:
    w = DeltaLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1), Lsn(10), data_block_size=64)
    final = tmp_path / w.file_name
    for blkno in range(100):
        w.put(rel_block_key(REL, blkno), Lsn(5), os.urandom(100), True)
        assert not final.exists()
    (temp,) = _files(tmp_path)
    assert is_temp_layer_file_name(temp) and temp.startswith(w.file_name)
    with pytest.raises(ValueError):
        parse_layer_name(temp)
    info = w.finish()
    assert _files(tmp_path) == [final.name] and info.path == final


def test_failed_finish_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "injected fsync failure")

    w = ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1))
    w.put(KEY_MIN, b"page")
    monkeypatch.setattr(layer_format.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        w.finish()
    assert _files(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(ValueError, match="aborted"):
        w.finish()

    # a failure after the rename (the directory fsync) also removes the final name
    w = ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1))
    w.put(KEY_MIN, b"page")
    monkeypatch.setattr(layer_format, "fsync_directory", lambda d: failing_fsync(0))
    with pytest.raises(OSError, match="injected"):
        w.finish()
    assert _files(tmp_path) == []


def test_finish_refuses_to_overwrite(tmp_path: Path) -> None:
    def write(value: bytes, replace: bool = False) -> layer_format.LayerInfo:
        with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(1)) as w:
            w.put(KEY_MIN, value)
            return w.finish(replace=replace)

    info = write(b"first")
    with pytest.raises(FileExistsError):
        write(b"second")
    assert _files(tmp_path) == [info.file_name]
    with ImageLayerReader(info.path) as r:
        assert r.get(KEY_MIN) == b"first"
    write(b"third", replace=True)
    with ImageLayerReader(info.path) as r:
        assert r.get(KEY_MIN) == b"third"
    assert _files(tmp_path) == [info.file_name]


# ------------------------------------------------------------------------- corruption

def _small_delta(directory: Path) -> tuple[layer_format.LayerInfo, Versions]:
    contents: Versions = {rel_block_key(REL, b): [(lsn, lsn == 10, b"v%d.%d " % (b, lsn) * 5)
                                                  for lsn in range(10, 10 + b % 3 + 1)]
                          for b in range(8)}
    contents[rel_block_key(REL, 3)][0] = (10, True, bytes(200))  # a compressed block
    info = _write_delta(directory, KEY_MIN, KEY_MAX, 10, 20, contents,
                        data_block_size=100, index_block_entries=4)
    return info, contents


def _with(path: Path, data: bytes, name: str = "copy") -> Path:
    target = path.parent / name
    target.write_bytes(data)
    return target


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:]


def _sections(info: layer_format.LayerInfo) -> layer_format.LayerHeader:
    with DeltaLayerReader(info.path) as r:
        assert r.header.data_block_count > 3 and r.header.index_block_count > 2
        return r.header


def test_header_corruption(tmp_path: Path) -> None:
    info, _ = _small_delta(tmp_path)
    data = info.path.read_bytes()
    for offset in range(HEADER_BLOCK_SIZE):
        bad = _with(info.path, _flip(data, offset))
        with pytest.raises(CorruptLayerError, match=re.escape(str(bad))):
            DeltaLayerReader(bad)
    with pytest.raises(CorruptLayerError, match=r"header block at offset 0.*checksum"):
        DeltaLayerReader(_with(info.path, _flip(data, 20)))
    with pytest.raises(CorruptLayerError, match="bad magic"):
        DeltaLayerReader(_with(info.path, _flip(data, 0)))
    with pytest.raises(CorruptLayerError, match="bad magic"):
        DeltaLayerReader(_with(info.path, b"PGDMP not a layer file" * 10))


def _reheader(data: bytes, **fields: int) -> bytes:
    header = layer_format.LayerHeader._make(HEADER.unpack_from(data))._replace(**fields)
    packed = HEADER.pack(*header)
    return packed + CRC.pack(crc32c.crc32c(packed)) + data[HEADER_BLOCK_SIZE:]


def test_header_checks_beyond_the_checksum(tmp_path: Path) -> None:
    info, _ = _small_delta(tmp_path)
    data = info.path.read_bytes()
    h = _sections(info)
    cases = {
        "unsupported format version 2": {"format_version": 2},
        "unknown layer kind": {"kind": 9},
        "kind image, expected delta": {"kind": 2},
        "inconsistent layout": {"index_offset": h.index_offset + 1},
        "trailing bytes": {"file_size": h.file_size - 1},
        "truncated": {"file_size": h.file_size + 1},
    }
    for message, fields in cases.items():
        with pytest.raises(CorruptLayerError, match=message):
            DeltaLayerReader(_with(info.path, _reheader(data, **fields)))
    with pytest.raises(CorruptLayerError, match="kind delta, expected image"):
        ImageLayerReader(info.path)


def test_data_block_corruption(tmp_path: Path) -> None:
    info, contents = _small_delta(tmp_path)
    data = info.path.read_bytes()
    h = _sections(info)
    for offset in range(h.data_offset, h.index_offset):
        bad = _with(info.path, _flip(data, offset))
        with DeltaLayerReader(bad) as r:   # opening reads only header and summary
            hits = 0
            for key, vs in contents.items():
                try:
                    got = r.versions(key, Lsn.MAX)
                except CorruptLayerError as exc:
                    assert str(bad) in str(exc) and "data block" in str(exc)
                    hits += 1
                else:
                    assert got == [DeltaValue(Lsn(lsn), wi, v) for lsn, wi, v in vs]
            assert hits >= 1, f"flipping data byte {offset} went unnoticed"


def test_index_block_corruption(tmp_path: Path) -> None:
    info, contents = _small_delta(tmp_path)
    data = info.path.read_bytes()
    h = _sections(info)
    for offset in range(h.index_offset, h.summary_offset):
        bad = _with(info.path, _flip(data, offset))
        with DeltaLayerReader(bad) as r:
            hits = 0
            for key, vs in contents.items():
                try:
                    got = r.versions(key, Lsn.MAX)
                except CorruptLayerError as exc:
                    assert str(bad) in str(exc) and "index block" in str(exc)
                    hits += 1
                else:
                    assert got == [DeltaValue(Lsn(lsn), wi, v) for lsn, wi, v in vs]
            assert hits >= 1, f"flipping index byte {offset} went unnoticed"


def test_summary_corruption(tmp_path: Path) -> None:
    info, _ = _small_delta(tmp_path)
    data = info.path.read_bytes()
    h = _sections(info)
    for offset in range(h.summary_offset, h.file_size):
        bad = _with(info.path, _flip(data, offset))
        with pytest.raises(CorruptLayerError, match=re.escape(f"{bad}: summary block")):
            DeltaLayerReader(bad)


def test_truncated_or_extended_files(tmp_path: Path) -> None:
    info, _ = _small_delta(tmp_path)
    data = info.path.read_bytes()
    for size in range(len(data)):
        bad = _with(info.path, data[:size])
        with pytest.raises(CorruptLayerError, match=re.escape(str(bad))):
            DeltaLayerReader(bad)
    with pytest.raises(CorruptLayerError, match="trailing bytes"):
        DeltaLayerReader(_with(info.path, data + b"\x00"))


def _rechecksum_block(data: bytes, start: int, end: int, patch_at: int,
                      patch: bytes) -> bytes:
    """Patch bytes inside the block [start, end) and fix its CRC trailer."""
    block = bytearray(data[start:end])
    block[patch_at - start:patch_at - start + len(patch)] = patch
    block[-CRC.size:] = CRC.pack(crc32c.crc32c(bytes(block[:-CRC.size])))
    return data[:start] + bytes(block) + data[end:]


def test_out_of_range_offsets_with_valid_checksums(tmp_path: Path) -> None:
    info, _ = _small_delta(tmp_path)
    data = info.path.read_bytes()
    h = _sections(info)
    first = rel_block_key(REL, 0)
    refs_at = h.summary_offset + h.index_block_count * layer_format.SUMMARY_ENTRY.size
    # data block 0 moved into the index section
    bad = _with(info.path, _rechecksum_block(data, h.summary_offset, h.file_size, refs_at,
                                             struct.pack(">Q", h.index_offset)))
    with DeltaLayerReader(bad) as r, pytest.raises(CorruptLayerError,
                                                   match="outside the data section"):
        r.versions(first, Lsn.MAX)
    # the first index entry's value runs past the end of its block
    entry0 = h.index_offset
    block_end = entry0 + 4 * INDEX_ENTRY.size + CRC.size
    bad = _with(info.path, _rechecksum_block(data, entry0, block_end, entry0 + 35,
                                             struct.pack(">I", 1 << 20)))
    with DeltaLayerReader(bad) as r, pytest.raises(CorruptLayerError, match="past the end"):
        r.versions(first, Lsn.MAX)
    # the first index entry points at a data block that does not exist
    bad = _with(info.path, _rechecksum_block(data, entry0, block_end, entry0 + 27,
                                             struct.pack(">I", 999)))
    with DeltaLayerReader(bad) as r, pytest.raises(CorruptLayerError, match="data block 999"):
        r.versions(first, Lsn.MAX)


def test_every_flipped_byte_is_an_error_never_a_wrong_value(tmp_path: Path) -> None:
    info, contents = _small_delta(tmp_path)
    data = info.path.read_bytes()
    for offset in range(len(data)):
        bad = _with(info.path, _flip(data, offset))
        try:
            with DeltaLayerReader(bad) as r:
                for key, vs in contents.items():
                    try:
                        got = r.versions(key, Lsn(15))
                    except CorruptLayerError:
                        continue
                    assert got == [DeltaValue(Lsn(lsn), wi, v) for lsn, wi, v in vs if lsn < 15]
                r.verify()  # every byte is under some checksum: this must raise
        except CorruptLayerError as exc:
            assert str(bad) in str(exc)
        else:
            pytest.fail(f"flipping byte {offset} went unnoticed")
