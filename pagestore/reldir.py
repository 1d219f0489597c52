"""The relation directory of a database, sharded: creating or dropping a relation
rewrites one small value, not the whole directory.

A single value listing every (relnode, fork) of a database made creating N relations
cost O(N^2) in ingest and storage (each create re-encoded all entries; Neon's users hit
this with 100k relations).  Here the directory is split by relnode into shards of
``SHARD_SIZE`` consecutive relnodes (relfilenodes come from the OID counter, so a bulk
of creates fills one shard after another):

    rel_dir_key(spc, db)               the root: SHARD_ROOT_MAGIC, then the shard ids in
                                       use (metadata.encode_u32_set)
    rel_dir_shard_key(spc, db, shard)  that shard's entries (metadata's RelDir encoding)

A create or drop rewrites its shard (at most SHARD_SIZE relnodes x 4 forks) and, only
when a shard appears or empties, the root.  Reading the whole directory is one lookup per
shard; whether one fork exists is two lookups.  A root without the magic is the
unsharded directory of an older pagestore (every entry in the root itself): it is read
as it is, and the first change ingest makes to that database writes it sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pagestore import metadata
from pagestore.keys import Key, rel_dir_key, rel_dir_shard_key

SHARD_BITS = 8
SHARD_SIZE = 1 << SHARD_BITS  # relnodes per shard
SHARD_ROOT_MAGIC = b"RDS1"

Entry = tuple[int, int]  # (relnode, forknum)
ImageReader = Callable[[Key], "bytes | None"]


def shard_of(relnode: int) -> int:
    return relnode >> SHARD_BITS


def encode_root(shards: Iterable[int]) -> bytes:
    return SHARD_ROOT_MAGIC + metadata.encode_u32_set(set(shards))


def decode_root(data: bytes) -> tuple[set[int], set[Entry] | None]:
    """(shard ids, None) for a sharded root; (empty, every entry) for an unsharded one."""
    if data.startswith(SHARD_ROOT_MAGIC):
        return metadata.decode_u32_set(data[len(SHARD_ROOT_MAGIC):], "RelDir root"), None
    return set(), metadata.decode_reldir(data)


@dataclass(slots=True)
class RelDir:
    """One database's directory in memory (ingest's TimelineState), by shard."""

    shards: dict[int, set[Entry]] = field(default_factory=dict)
    # Read from an unsharded root: the next change writes every shard and the root.
    unsharded_on_disk: bool = False

    @classmethod
    def of(cls, entries: set[Entry] | list[Entry], *, unsharded_on_disk: bool = False) -> RelDir:
        rd = cls(unsharded_on_disk=unsharded_on_disk)
        for entry in entries:
            rd.shards.setdefault(shard_of(entry[0]), set()).add(entry)
        return rd

    def __contains__(self, entry: Entry) -> bool:
        shard = self.shards.get(shard_of(entry[0]))
        return shard is not None and entry in shard

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())

    def entries(self) -> list[Entry]:
        return sorted(e for s in self.shards.values() for e in s)

    def add(self, spc: int, db: int, entry: Entry) -> dict[Key, bytes]:
        """Add an entry; the values to write (its shard, and the root if it changed)."""
        sid = shard_of(entry[0])
        shard = self.shards.get(sid)
        new_shard = shard is None
        if shard is None:
            shard = self.shards[sid] = set()
        shard.add(entry)
        return self._changes(spc, db, sid, root_changed=new_shard)

    def discard(self, spc: int, db: int, entry: Entry) -> dict[Key, bytes]:
        """Remove an entry if present; the values to write (an emptied shard is removed)."""
        sid = shard_of(entry[0])
        shard = self.shards.get(sid)
        if shard is None or entry not in shard:
            return {}
        shard.discard(entry)
        emptied = not shard
        if emptied:
            del self.shards[sid]
        return self._changes(spc, db, sid, root_changed=emptied)

    def _changes(self, spc: int, db: int, sid: int, *, root_changed: bool) -> dict[Key, bytes]:
        if self.unsharded_on_disk:
            return self.all_values(spc, db)
        out = {rel_dir_shard_key(spc, db, sid): shard_value(self.shards.get(sid))}
        if root_changed:
            out[rel_dir_key(spc, db)] = encode_root(self.shards.keys())
        return out

    def all_values(self, spc: int, db: int) -> dict[Key, bytes]:
        """The root and every shard (a new or copied database), in key order."""
        self.unsharded_on_disk = False
        out = {rel_dir_key(spc, db): encode_root(self.shards.keys())}
        for sid in sorted(self.shards):
            out[rel_dir_shard_key(spc, db, sid)] = shard_value(self.shards[sid])
        return out


def shard_value(entries: set[Entry] | None) -> bytes:
    """A shard's value; empty (the key removed) when it has no entries."""
    return metadata.encode_reldir(entries) if entries else b""


# ---------------------------------------------------------------------------- readers

def read(image: ImageReader, spc: int, db: int) -> RelDir:
    """The directory of database (spc, db) as stored (``image`` reads a key's value at the
    LSN of interest; None or empty: absent)."""
    raw = image(rel_dir_key(spc, db))
    if not raw:
        return RelDir()
    shards, unsharded = decode_root(raw)
    if unsharded is not None:
        return RelDir.of(unsharded, unsharded_on_disk=True)
    rd = RelDir()
    for sid in sorted(shards):
        value = image(rel_dir_shard_key(spc, db, sid))
        if value:
            rd.shards[sid] = metadata.decode_reldir(value)
    return rd


def contains(image: ImageReader, spc: int, db: int, entry: Entry) -> bool:
    """Whether the fork is in the directory: the root, then one shard."""
    raw = image(rel_dir_key(spc, db))
    if not raw:
        return False
    shards, unsharded = decode_root(raw)
    if unsharded is not None:
        return entry in unsharded
    sid = shard_of(entry[0])
    if sid not in shards:
        return False
    value = image(rel_dir_shard_key(spc, db, sid))
    return value is not None and value != b"" and entry in metadata.decode_reldir(value)


def stored_keys(image: ImageReader, spc: int, db: int) -> list[Key]:
    """The directory's keys that hold a value (root, then shards), in key order."""
    raw = image(rel_dir_key(spc, db))
    if not raw:
        return [rel_dir_key(spc, db)]
    shards, _ = decode_root(raw)
    return [rel_dir_key(spc, db), *(rel_dir_shard_key(spc, db, s) for s in sorted(shards))]
