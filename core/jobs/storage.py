"""Object storage for dataset archives and artifacts: a local directory or any S3-compatible store.

Keys are relative POSIX paths such as ``datasets/<id>/archive.zip``. Writes are atomic: a local
write goes to a temp file that is renamed; an S3 upload only becomes visible once complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Protocol

from core.settings import Settings


class StorageError(RuntimeError):
    """The object store failed or the key does not exist."""


class Storage(Protocol):
    def put_file(self, key: str, source: Path) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with the folder ``prefix`` (ending in "/"); return
        how many there were."""
        ...
    def exists(self, key: str) -> bool: ...
    def check(self) -> None:
        """Raise StorageError unless the store is reachable and writable."""
        ...
    def init(self) -> str:
        """Create the directory or bucket if it is missing; return what was done."""
        ...


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "\\" in key:
        raise StorageError(f"invalid storage key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if not prefix.endswith("/"):
        raise StorageError(f"invalid storage prefix {prefix!r}: a folder ending in '/'")
    return _check_key(prefix)


def _atomic_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, source: Path) -> None:
        _atomic_copy(source, self._path(key))

    def get_file(self, key: str, dest: Path) -> None:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"object not found: {key}")
        _atomic_copy(path, dest)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self.root / _check_prefix(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for path in folder.rglob("*") if path.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".readyz-"):
                pass
        except OSError as e:
            raise StorageError(f"local storage {self.root} is not writable: {e}") from e

    def init(self) -> str:
        existed = self.root.is_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.check()
        return f"{self.root} {'exists' if existed else 'created'}"

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"


class S3Storage:
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=Config(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, source: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(source), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"upload of {key} to s3://{self.bucket} failed: {e}") from e

    def get_file(self, key: str, dest: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, dest)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"download of {key} from s3://{self.bucket} failed: {e}") from e
        finally:
            Path(tmp).unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"delete of {key} from s3://{self.bucket} failed: {e}") from e

    def delete_prefix(self, prefix: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        count = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(_check_prefix(prefix)))
            for page in pages:  # at most 1,000 keys a page, as many as one delete_objects takes
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                    count += len(keys)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"delete of {prefix} from s3://{self.bucket} failed: {e}") from e
        return count

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"s3://{self.bucket}: {e}") from e
        return True

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"bucket s3://{self.bucket} is not reachable: {e}") from e

    def init(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return f"s3://{self.bucket} exists"
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"bucket s3://{self.bucket} is not reachable: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"bucket s3://{self.bucket} is not reachable: {e}") from e
        region = self.client.meta.region_name
        extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"cannot create bucket s3://{self.bucket}: {e}") from e
        return f"s3://{self.bucket} created"

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"


def storage_from_settings(settings: Settings) -> Storage:
    url = settings.resolved_storage_url
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3Storage(bucket, prefix, settings)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise ValueError(f"unsupported storage URL {url!r}: use a directory or s3://bucket")
    return LocalStorage(Path(url))


@lru_cache
def get_storage(settings: Settings) -> Storage:
    return storage_from_settings(settings)
