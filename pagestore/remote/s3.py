"""S3RemoteStorage: an S3 bucket (or an S3-compatible server at ``endpoint``), with boto3.

Credentials come from where boto3 looks for them: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), ~/.aws/credentials, an instance role.
botocore's own retries are kept short (the callers retry with their own backoff and
say so in their status); timeouts are bounded so a dead endpoint is an error, not a hang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import boto3
import botocore.config
import botocore.exceptions

from pagestore.errors import RemoteObjectNotFound, RemoteStorageError
from pagestore.remote.storage import RemoteObject, RemoteStorage, join_prefix

if TYPE_CHECKING:
    from pathlib import Path

_PERMANENT_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "NoSuchBucket", "InvalidBucketName", "AllAccessDisabled", "403"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


class S3RemoteStorage(RemoteStorage):
    kind = "s3"

    def __init__(self, bucket: str, region: str, prefix: str = "", endpoint: str = "") -> None:
        self.bucket = bucket
        self.region = region
        self.prefix = prefix
        self.endpoint = endpoint
        self._client: Any = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint or None,
            config=botocore.config.Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5, read_timeout=30, max_pool_connections=32,
                s3={"addressing_style": "path"} if endpoint else None))

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else f" in {self.region}"
        return f"S3 bucket {self.bucket}{where} (prefix {self.prefix or '/'})"

    def _key(self, key: str) -> str:
        return join_prefix(self.prefix, key)

    def _fail(self, op: str, key: str, e: Exception) -> NoReturn:
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            raise RemoteStorageError(
                f"{self.describe()}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)", permanent=True) from None
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            text = f"{self.describe()}: {op} {key}: {code or status} {err.get('Message', '')}"
            if code == "NoSuchBucket":
                raise RemoteStorageError(f"{self.describe()}: the bucket does not exist",
                                         permanent=True) from None
            if code in _NOT_FOUND_CODES or status == 404:
                raise RemoteObjectNotFound(text.strip()) from None
            if code in _PERMANENT_CODES or status in (400, 401, 403):
                raise RemoteStorageError(
                    text.strip() + " (check the credentials and the bucket's permissions)",
                    permanent=True) from None
            raise RemoteStorageError(text.strip()) from None
        raise RemoteStorageError(f"{self.describe()}: {op} {key}: {e}") from None

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404:
                raise RemoteStorageError(f"{self.describe()}: the bucket does not exist",
                                         permanent=True) from None
            if status in (400, 401, 403):
                raise RemoteStorageError(
                    f"{self.describe()}: access refused ({status}): check AWS_ACCESS_KEY_ID "
                    "/ AWS_SECRET_ACCESS_KEY and the bucket's permissions",
                    permanent=True) from None
            self._fail("head bucket", "", e)
        except Exception as e:
            self._fail("head bucket", "", e)

    def _put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            self._fail("put", key, e)

    def _put_new(self, key: str, data: bytes) -> bool:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                    IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return False
            self._fail("put", key, e)
        except Exception as e:
            self._fail("put", key, e)

    def _put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f,
                                        ContentLength=size)
            except Exception as e:
                self._fail("put", key, e)

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start is not None and end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        try:
            resp = self._client.get_object(**kwargs)
            data: bytes = resp["Body"].read()
            return data
        except Exception as e:
            self._fail("get", key, e)

    def _download(self, key: str, path: Path) -> int:
        with open(path, "wb") as f:  # a local error here is not the store's
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
                size = 0
                for chunk in resp["Body"].iter_chunks(1024 * 1024):
                    f.write(chunk)
                    size += len(chunk)
                return size
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                self._fail("download", key, e)

    def list(self, prefix: str) -> list[RemoteObject]:
        full = self._key(prefix)
        strip = len(full) - len(prefix)
        out: list[RemoteObject] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", ()):
                    out.append(RemoteObject(obj["Key"][strip:], int(obj["Size"])))
        except Exception as e:
            self._fail("list", prefix, e)
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            self._fail("delete", key, e)

    def head(self, key: str) -> RemoteObject | None:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return RemoteObject(key, int(resp["ContentLength"]))
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            self._fail("head", key, e)
        except Exception as e:
            self._fail("head", key, e)

    def close(self) -> None:
        self._client.close()
