"""Remote storage: the page server's backup, so a node with an empty disk recovers.

- storage: the RemoteStorage interface (put, get with a byte range, list, delete, head)
  and ``retrying``;
- local, s3, azure: the three backends (a directory, boto3, azure-storage-blob);
- layout: object names (with the tenant's generation) and index_part.json;
- ondemand: layer files fetched from remote storage when a read needs them (whole, or
  ranged reads of the blocks a lookup needs) and the local disk budget.

``open_remote_storage(config)`` builds the configured backend; ``None`` when remote
storage is off (the default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagestore.remote.storage import RemoteObject, RemoteStorage, retrying

if TYPE_CHECKING:
    from pagestore.config import RemoteStorageConfig

__all__ = ["RemoteObject", "RemoteStorage", "open_remote_storage", "retrying"]


def open_remote_storage(cfg: RemoteStorageConfig | None, *, check: bool = True
                        ) -> RemoteStorage | None:
    """The backend ``cfg`` names (None when remote storage is off).  ``check`` verifies
    at once that it is reachable with the credentials given (a permanent
    RemoteStorageError saying what is wrong otherwise)."""
    if cfg is None:
        return None
    storage: RemoteStorage
    if cfg.kind == "local":
        from pagestore.remote.local import LocalRemoteStorage
        storage = LocalRemoteStorage(cfg.local_path)
    elif cfg.kind == "s3":
        from pagestore.remote.s3 import S3RemoteStorage
        storage = S3RemoteStorage(cfg.bucket_name, cfg.bucket_region, cfg.prefix_in_bucket,
                                  cfg.endpoint)
    else:
        from pagestore.remote.azure import AzureRemoteStorage
        storage = AzureRemoteStorage(cfg.container_name, cfg.storage_account,
                                     cfg.prefix_in_container, cfg.endpoint,
                                     cfg.container_region)
    if check:
        storage.check()
    return storage
