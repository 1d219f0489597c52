"""AzureRemoteStorage: an Azure Blob container, with azure-storage-blob.

The account key comes from AZURE_STORAGE_ACCESS_KEY (AZURE_STORAGE_CONNECTION_STRING is
taken too when set).  ``endpoint`` overrides the blob service URL
(``https://<storage_account>.blob.core.windows.net``): for Azurite give
``http://127.0.0.1:10000`` (the account is appended as the path, Azurite's style) or the
full ``http://127.0.0.1:10000/devstoreaccount1``.  The SDK's own retries are kept short
(the callers retry with their own backoff); timeouts are bounded.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, LinearRetry

from pagestore.errors import RemoteObjectNotFound, RemoteStorageError
from pagestore.remote.storage import RemoteObject, RemoteStorage, join_prefix

if TYPE_CHECKING:
    from pathlib import Path

# The SDK logs every HTTP request at INFO.
logging.getLogger("azure").setLevel(logging.WARNING)

KEY_ENV = "AZURE_STORAGE_ACCESS_KEY"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"


def account_url(account: str, endpoint: str) -> str:
    if not endpoint:
        return f"https://{account}.blob.core.windows.net"
    parts = urlsplit(endpoint)
    if parts.path.strip("/"):
        return endpoint.rstrip("/")
    return f"{endpoint.rstrip('/')}/{account}"


class AzureRemoteStorage(RemoteStorage):
    kind = "azure"

    def __init__(self, container: str, account: str, prefix: str = "", endpoint: str = "",
                 region: str = "") -> None:
        self.container = container
        self.account = account
        self.prefix = prefix
        self.region = region
        self.url = account_url(account, endpoint)
        options: dict[str, Any] = {
            "retry_policy": LinearRetry(backoff=1, random_jitter_range=0, retry_total=2),
            "connection_timeout": 5, "read_timeout": 30}
        key = os.environ.get(KEY_ENV)
        conn = os.environ.get(CONNECTION_STRING_ENV)
        if key:
            service = BlobServiceClient(
                self.url, credential={"account_name": account, "account_key": key}, **options)
        elif conn:
            service = BlobServiceClient.from_connection_string(conn, **options)
        else:
            service = BlobServiceClient(self.url, **options)  # anonymous: check() says so
        self._has_credentials = bool(key or conn)
        self._service = service
        self._container: Any = service.get_container_client(container)

    def describe(self) -> str:
        return f"Azure container {self.container} at {self.url} (prefix {self.prefix or '/'})"

    def _key(self, key: str) -> str:
        return join_prefix(self.prefix, key)

    def _fail(self, op: str, key: str, e: Exception) -> NoReturn:
        code = getattr(e, "error_code", None) or ""
        if isinstance(e, ResourceNotFoundError):
            if code == "ContainerNotFound":
                raise RemoteStorageError(f"{self.describe()}: the container does not exist",
                                         permanent=True) from None
            raise RemoteObjectNotFound(f"{self.describe()}: no object {key}") from None
        if isinstance(e, ClientAuthenticationError) or (
                isinstance(e, HttpResponseError) and e.status_code in (401, 403)):
            hint = "" if self._has_credentials else f" (no {KEY_ENV} set)"
            raise RemoteStorageError(
                f"{self.describe()}: {op} {key}: access refused{hint}: check the storage "
                f"account and its key", permanent=True) from None
        if isinstance(e, AzureError):
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RemoteStorageError(f"{self.describe()}: {op} {key}: {first}") from None
        raise RemoteStorageError(f"{self.describe()}: {op} {key}: {e}") from None

    def check(self) -> None:
        try:
            self._container.get_container_properties()
        except Exception as e:
            self._fail("check container", "", e)

    def _put(self, key: str, data: bytes) -> None:
        try:
            self._container.upload_blob(self._key(key), data, overwrite=True)
        except Exception as e:
            self._fail("put", key, e)

    def _put_new(self, key: str, data: bytes) -> bool:
        try:
            self._container.upload_blob(self._key(key), data, overwrite=False)
            return True
        except ResourceExistsError:
            return False
        except Exception as e:
            self._fail("put", key, e)

    def _put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            try:
                self._container.upload_blob(self._key(key), f, length=size, overwrite=True,
                                            max_concurrency=2)
            except Exception as e:
                self._fail("put", key, e)

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        try:
            if start is not None and end is not None:
                stream = self._container.download_blob(self._key(key), offset=start,
                                                       length=end - start)
            else:
                stream = self._container.download_blob(self._key(key))
            data: bytes = stream.readall()
            return data
        except Exception as e:
            self._fail("get", key, e)

    def _download(self, key: str, path: Path) -> int:
        with open(path, "wb") as f:  # a local error here is not the store's
            try:
                stream = self._container.download_blob(self._key(key), max_concurrency=2)
                size: int = stream.readinto(f)
                return size
            except AzureError as e:
                self._fail("download", key, e)

    def list(self, prefix: str) -> list[RemoteObject]:
        full = self._key(prefix)
        strip = len(full) - len(prefix)
        try:
            out = [RemoteObject(b.name[strip:], int(b.size))
                   for b in self._container.list_blobs(name_starts_with=full)]
        except Exception as e:
            self._fail("list", prefix, e)
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, key: str) -> None:
        try:
            self._container.delete_blob(self._key(key))
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) == "ContainerNotFound":
                self._fail("delete", key, e)
        except Exception as e:
            self._fail("delete", key, e)

    def head(self, key: str) -> RemoteObject | None:
        try:
            props = self._container.get_blob_client(self._key(key)).get_blob_properties()
            return RemoteObject(key, int(props.size))
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) == "ContainerNotFound":
                self._fail("head", key, e)
            return None
        except Exception as e:
            self._fail("head", key, e)

    def close(self) -> None:
        self._service.close()
