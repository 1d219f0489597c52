"""Importing a base backup: a PostgreSQL data directory -> one image layer + metadata.

Source of truth for the layout: PostgreSQL's data directory (storage.sgml "Database
File Layout"), relpath.h (relation file names), slru.c (SLRU segment names), twophase.c
(state files end with a CRC-32C), pg_control.h; Neon's import_datadir.rs for the key-space
conventions.

Rules:
- Every relation fork (global/ and base/<db>/ files named <relnode>[_fsm|_vm|_init][.N])
  becomes page images, its size and its directory entry; pg_filenode.map files become
  relmap values; pg_xact and pg_multixact SLRU segments become SLRU pages, sizes and
  directories; pg_twophase files become twophase values (without their CRC); pg_control
  becomes the control file and checkpoint values.
- Everything is written at one LSN (the backup's start LSN), into one image layer, in key
  order; the staged files are walked in that order, so the layer streams to disk.
- Files in other tablespaces are refused (only pg_default and pg_global are supported);
  a relation file whose size is not a multiple of 8192 is refused.  Other files
  (configuration, pg_wal, logs, stats) are not part of the key space and are skipped.
- ``stage_tar`` unpacks a BASE_BACKUP tar stream into a staging directory, refusing
  member paths that escape it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pagestore import metadata, values
from pagestore.errors import BadRequest, CorruptionError, UnsupportedWalRecord
from pagestore.keys import (
    BLCKSZ,
    DEFAULTTABLESPACE_OID,
    GLOBALTABLESPACE_OID,
    KEY_MAX,
    KEY_MIN,
    SLRU_PAGES_PER_SEGMENT,
    ForkNumber,
    RelTag,
    SlruKind,
    checkpoint_key,
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
from pagestore.layers.image import ImageLayerWriter
from pagestore.pg.controlfile import ControlFile
from pagestore.pg.tar import TarChunk, TarEnd, TarEvent, TarMember
from pagestore.reldir import RelDir
from services.ingest.walingest import TimelineState

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from pagestore.layers.format import LayerInfo
    from pagestore.lsn import Lsn

log = logging.getLogger(__name__)

REL_FILE_RE = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$")
SLRU_FILE_RE = re.compile(r"^[0-9A-F]{4,6}$")
TWOPHASE_FILE_RE = re.compile(r"^[0-9A-F]{8}$")
FORKS = {None: ForkNumber.MAIN, "fsm": ForkNumber.FSM, "vm": ForkNumber.VISIBILITYMAP,
         "init": ForkNumber.INIT}
RELSEG_BYTES = 131072 * BLCKSZ
RELMAP_FILE = "pg_filenode.map"
SLRU_DIRS = {SlruKind.CLOG: "pg_xact", SlruKind.MULTIXACT_MEMBERS: "pg_multixact/members",
             SlruKind.MULTIXACT_OFFSETS: "pg_multixact/offsets"}


@dataclass(frozen=True, slots=True)
class ImportResult:
    layer: LayerInfo
    state: TimelineState
    control: ControlFile
    relations: int
    pages: int


# --------------------------------------------------------------------------- staging

class TarStager:
    """Writes tar events into a staging directory; events may arrive in several calls."""

    def __init__(self, staging: Path) -> None:
        self.root = staging.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = 0
        self._current: tuple[TarMember, BinaryIO] | None = None
        self.ended = False

    def feed(self, events: Iterable[TarEvent]) -> None:
        root = self.root
        for ev in events:
            if isinstance(ev, TarMember):
                if self._current is not None:
                    raise BadRequest(f"tar member {ev.name!r} starts inside "
                                     f"{self._current[0].name!r}")
                target = (root / ev.path).resolve()
                if target != root and root not in target.parents:
                    raise BadRequest(f"base backup member {ev.name!r} escapes the staging "
                                     "directory")
                if ev.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                elif ev.is_file:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    f = open(target, "wb")
                    self.files += 1
                    if ev.size == 0:
                        f.close()
                    else:
                        self._current = (ev, f)
                else:
                    # Symlinks (pg_tblspc entries) and other types leave a marker, so the
                    # import can refuse what it does not support.
                    target.parent.mkdir(parents=True, exist_ok=True)
                    (target.parent / (target.name + ".__nonfile__")).write_text(ev.linkname)
            elif isinstance(ev, TarChunk):
                if self._current is None or self._current[0] is not ev.member:
                    raise BadRequest(f"tar content for {ev.member.name!r} outside its member")
                fh = self._current[1]
                fh.write(ev.data)
                if ev.last:
                    fh.close()
                    self._current = None
            elif isinstance(ev, TarEnd):
                self.ended = True

    def finish(self) -> int:
        """Check the archive was complete; returns the number of regular files."""
        if self._current is not None:
            self._current[1].close()
            raise BadRequest(f"base backup ended inside member {self._current[0].name!r}")
        if not self.ended:
            raise BadRequest("base backup ended without the end-of-archive marker")
        return self.files


def stage_tar(events: Iterable[TarEvent], staging: Path) -> int:
    """Unpack a whole tar event stream into ``staging``; returns the number of files."""
    stager = TarStager(staging)
    stager.feed(events)
    return stager.finish()


# --------------------------------------------------------------------------- import

@dataclass(slots=True)
class _RelFiles:
    segments: dict[int, Path]

    def nblocks(self, rel: RelTag) -> int:
        total = 0
        for segno in range(len(self.segments)):
            path = self.segments.get(segno)
            if path is None:
                raise CorruptionError(f"relation {rel}: segment {segno} is missing")
            size = path.stat().st_size
            if size % BLCKSZ:
                raise CorruptionError(f"relation file {path} is {size} bytes, not a multiple "
                                      f"of {BLCKSZ}")
            if segno < len(self.segments) - 1 and size != RELSEG_BYTES:
                raise CorruptionError(f"relation file {path} is {size} bytes but is not the "
                                      "last segment")
            total += size // BLCKSZ
        return total


def _scan_db_dir(path: Path, spc: int, db: int) -> dict[RelTag, _RelFiles]:
    rels: dict[RelTag, _RelFiles] = {}
    for entry in path.iterdir():
        m = REL_FILE_RE.match(entry.name)
        if not m or not entry.is_file():
            continue
        rel = RelTag(spc, db, int(m.group(1)), FORKS[m.group(2)])
        rels.setdefault(rel, _RelFiles({})).segments[int(m.group(3) or 0)] = entry
    return rels


def import_datadir(datadir: Path, timeline_dir: Path, lsn: Lsn) -> ImportResult:
    """Write the key space of ``datadir`` as one image layer at ``lsn``."""
    control_path = datadir / "global" / "pg_control"
    if not control_path.exists():
        raise BadRequest(f"{datadir} is not a PostgreSQL data directory (no global/pg_control)")
    control = ControlFile.parse(control_path.read_bytes())
    tblspc = datadir / "pg_tblspc"
    if tblspc.exists() and any(tblspc.iterdir()):
        raise UnsupportedWalRecord(
            f"the database uses tablespaces other than pg_default and pg_global "
            f"({', '.join(sorted(p.name for p in tblspc.iterdir()))}); pagestore supports "
            "only those two")

    dbs: dict[tuple[int, int], Path] = {(GLOBALTABLESPACE_OID, 0): datadir / "global"}
    base = datadir / "base"
    if base.exists():
        for entry in base.iterdir():
            if entry.is_dir() and entry.name.isdigit():
                dbs[(DEFAULTTABLESPACE_OID, int(entry.name))] = entry

    st = TimelineState()
    all_rels: dict[tuple[int, int], dict[RelTag, _RelFiles]] = {}
    for (spc, db), path in dbs.items():
        rels = _scan_db_dir(path, spc, db)
        all_rels[(spc, db)] = rels
        has_relmap = (path / RELMAP_FILE).exists()
        if has_relmap or rels:
            st.dbdir[(spc, db)] = has_relmap

    pages = 0
    timeline_dir.mkdir(parents=True, exist_ok=True)
    with ImageLayerWriter(timeline_dir, KEY_MIN, KEY_MAX, lsn, writer="ingest") as w:
        w.put(dbdir_key(), values.image(metadata.encode_dbdir(st.dbdir)))
        for (spc, db) in sorted(st.dbdir):
            path = dbs[(spc, db)]
            if st.dbdir[(spc, db)]:
                w.put(relmap_key(spc, db), values.image((path / RELMAP_FILE).read_bytes()))
            rels = all_rels[(spc, db)]
            st.reldirs[(spc, db)] = RelDir.of([(r.relnode, r.forknum) for r in rels])
            for key, value in st.reldirs[(spc, db)].all_values(spc, db).items():
                w.put(key, values.image(value))
            for rel in sorted(rels):
                n = rels[rel].nblocks(rel)
                blkno = 0
                for segno in range(len(rels[rel].segments)):
                    with open(rels[rel].segments[segno], "rb") as f:
                        while page := f.read(BLCKSZ):
                            w.put(rel_block_key(rel, blkno), values.image(page))
                            blkno += 1
                if blkno != n:
                    raise CorruptionError(f"relation {rel} changed size while importing")
                pages += n
                st.relsizes[rel] = n
                w.put(rel_size_key(rel), values.image(metadata.encode_nblocks(n)))
        for kind in SlruKind:
            d = datadir / SLRU_DIRS[kind]
            segs = sorted(int(p.name, 16) for p in d.iterdir()
                          if SLRU_FILE_RE.match(p.name)) if d.exists() else []
            st.slru_dirs[kind] = set(segs)
            w.put(slru_dir_key(kind), values.image(metadata.encode_u32_set(set(segs))))
            for segno in segs:
                data = (d / f"{segno:04X}").read_bytes()
                if len(data) % BLCKSZ or len(data) > SLRU_PAGES_PER_SEGMENT * BLCKSZ:
                    raise CorruptionError(f"SLRU segment {d / f'{segno:04X}'} is {len(data)} bytes")
                n = len(data) // BLCKSZ
                for blk in range(n):
                    w.put(slru_block_key(kind, segno, blk),
                          values.image(data[blk * BLCKSZ:(blk + 1) * BLCKSZ]))
                st.slru_sizes[(kind, segno)] = n
                w.put(slru_segment_size_key(kind, segno), values.image(metadata.encode_nblocks(n)))
        d = datadir / "pg_twophase"
        xids = sorted(int(p.name, 16) for p in d.iterdir()
                      if TWOPHASE_FILE_RE.match(p.name)) if d.exists() else []
        st.twophase = set(xids)
        w.put(twophase_dir_key(), values.image(metadata.encode_u32_set(set(xids))))
        for xid in xids:
            data = (d / f"{xid:08X}").read_bytes()
            w.put(twophase_file_key(xid), values.image(data[:-4]))  # without its CRC
        w.put(controlfile_key(), values.image(control.raw))
        ckpt = control.checkpoint
        ckpt.redo = 0  # not a shutdown checkpoint at this LSN (see walingest)
        st.checkpoint = ckpt
        st.control = control.raw
        w.put(checkpoint_key(), values.image(ckpt.pack()))
        info = w.finish()
    log.info("imported %s: relations=%d pages=%d lsn=%s layer=%s", datadir, len(st.relsizes),
             pages, lsn, info.file_name)
    return ImportResult(info, st, control, len(st.relsizes), pages)
