"""LocalRemoteStorage: remote storage in a local directory (``local_path``).

For tests, single-machine setups and a mounted network filesystem.  A key is a path under
the directory.  A put writes a temporary file next to the target, fsyncs it and renames
it over the target (then fsyncs the directory), so a reader sees the old object or the
new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from pagestore.errors import RemoteObjectNotFound, RemoteStorageError
from pagestore.layers.format import fsync_directory
from pagestore.remote.storage import RemoteObject, RemoteStorage

_TEMP = ".___remote_temp"


def _compatible(directory: str, prefix: str) -> bool:
    return prefix.startswith(directory) or directory.startswith(prefix)


class LocalRemoteStorage(RemoteStorage):
    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"local directory {self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".pagestore-probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()} is not usable: {e}",
                                     permanent=True) from None

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad remote key {key!r}")
        return self.root / key

    def _write(self, key: str, fill: bytes | Path, *, exclusive: bool = False) -> bool:
        """Write a temporary file next to the target, fsync it, then rename it over the
        target (or, ``exclusive``, link it: False when the target exists)."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}{_TEMP}")
            try:
                with open(tmp, "wb") as f:
                    if isinstance(fill, bytes):
                        f.write(fill)
                    else:
                        with open(fill, "rb") as src:
                            shutil.copyfileobj(src, f, 1024 * 1024)
                    f.flush()
                    os.fsync(f.fileno())
                if exclusive:
                    try:
                        os.link(tmp, target)  # an atomic create: fails if it exists
                    except FileExistsError:
                        return False
                else:
                    os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            fsync_directory(target.parent)
            return True
        except FileNotFoundError as e:
            if isinstance(fill, Path) and not fill.exists():
                raise  # the local source is gone: the caller's business, not storage's
            raise RemoteStorageError(f"{self.describe()}: put {key}: {e}") from None
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()}: put {key}: {e}") from None

    def _put_new(self, key: str, data: bytes) -> bool:
        return self._write(key, data, exclusive=True)

    def _put(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def _put_file(self, key: str, path: Path) -> None:
        self._write(key, Path(path))

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if start is None or end is None:
                    return f.read()
                return os.pread(f.fileno(), end - start, start)
        except FileNotFoundError:
            raise RemoteObjectNotFound(f"{self.describe()}: no object {key}") from None
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()}: get {key}: {e}") from None

    def _download(self, key: str, path: Path) -> int:
        try:
            with open(self._path(key), "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                return dst.tell()
        except FileNotFoundError:
            if not self._path(key).exists():
                raise RemoteObjectNotFound(f"{self.describe()}: no object {key}") from None
            raise
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()}: download {key}: {e}") from None

    def list(self, prefix: str) -> list[RemoteObject]:
        # Walk only the directory the prefix names (its part up to the last '/').
        base, _, _ = prefix.rpartition("/")
        top = self.root / base if base else self.root
        out: list[RemoteObject] = []
        if not top.is_dir():
            return out
        for dirpath, dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            # Descend only into directories whose keys can start with the prefix.
            dirs[:] = [d for d in dirs
                       if _compatible(f"{rel}/{d}/" if rel != "." else f"{d}/", prefix)]
            for name in files:
                if name.endswith(_TEMP):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        out.append(RemoteObject(key, full.stat().st_size))
                    except FileNotFoundError:
                        continue
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()}: delete {key}: {e}") from None

    def head(self, key: str) -> RemoteObject | None:
        try:
            return RemoteObject(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RemoteStorageError(f"{self.describe()}: head {key}: {e}") from None
