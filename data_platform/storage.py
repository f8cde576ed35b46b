"""Object store: a local directory or an S3-compatible bucket, behind one interface.

`open_store(url)` picks the implementation from `DATA_PLATFORM_STORAGE_URL`'s form:
a path or `file://` URL gives `LocalObjectStore`, `s3://bucket[/prefix]` gives
`S3ObjectStore`. Both lay objects out identically (keys are `/`-separated paths
below the root), so a person can read either and the code never branches on where it
runs. S3 speaks only the standard protocol through boto3 (control plane, streaming
GETs resumed where a body broke, multipart uploads, botocore's retries) and pyarrow
(`filesystem`, for readers that want random access such as Parquet); endpoint and
credentials come from boto3's standard variables, so MinIO, AWS and any other
implementation are configured alike.
"""

import hashlib
import io
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import pyarrow.fs as pafs


COPY_CHUNK = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024  # most a HashingReader asks of its source at once
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024  # parts of a streamed write (S3's minimum is 5 MiB; 5 cost more CPU, saved no RSS)
PARTS_IN_FLIGHT = 1  # a streamed write holds at most this many parts besides the one it fills


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # S3's ETag without quotes; a size+mtime tag on a local directory
    last_modified: datetime  # timezone-aware, UTC

    @property
    def is_folder_marker(self) -> bool:
        return self.key.endswith("/")


def check_store_key(key: str) -> str:
    """The storage layer's own guard: a key names something below the root.

    Layout rules (names, traversal, control characters) are `layout`'s business and
    are checked before keys are built; the store must still be able to copy and
    delete a badly named upload in order to quarantine it.
    """
    if not key or key.startswith("/") or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


@dataclass(frozen=True)
class IncompleteWrite:
    """A write that never finished: a local temp file or an S3 multipart upload."""
    kind: str  # "temporary_file" | "multipart_upload"
    key: str  # the temp file under .tmp/, or the key the multipart upload was writing
    started: datetime  # timezone-aware, UTC
    size: int | None
    ref: str  # the temp file's name, or the multipart UploadId


class ObjectChanged(Exception):
    """The object was replaced or deleted between listing and reading."""


class ObjectStore(ABC):
    url: str

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (all pages, no order promised)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def open_read(self, key: str, *, if_etag: str | None = None) -> "AbstractContextManager[tuple[ObjectInfo, BinaryIO]]":
        """The object as one sequential stream (a single GET on S3), with its info.

        With `if_etag`, raise `ObjectChanged` unless the object still has that tag.
        """

    def download(self, key: str, dst: BinaryIO, *, if_etag: str | None = None) -> tuple[ObjectInfo, str]:
        """Copy the object into `dst` in one streaming read; return its info and sha256."""
        with self.open_read(key, if_etag=if_etag) as (info, src):
            reader = HashingReader(src)
            shutil.copyfileobj(reader, dst, COPY_CHUNK)
            return info, reader.hexdigest()

    @abstractmethod
    def upload_file(self, path: str | Path, key: str, progress: Callable[[int], None] | None = None) -> None:
        """Put a local file at `key`, all at once (multipart above 64 MB on S3).
        `progress` is called with byte counts as they are sent."""

    @abstractmethod
    def open_write(self, key: str) -> "ObjectWriter":
        """A writable stream whose bytes become the object at `key` only on `commit()`;
        `abort()` (or an exception inside `with`) leaves nothing behind. Bytes are sent
        as they are written (S3: a multipart upload), so writing and sending overlap."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object; FileNotFoundError when there is none (on every store)."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Server-side copy where the store can."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting what is already gone is not an error."""

    @property
    @abstractmethod
    def filesystem(self) -> pafs.FileSystem:
        """pyarrow filesystem for data readers; `fs_path(key)` gives the path in it."""

    @abstractmethod
    def fs_path(self, key: str) -> str: ...

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete_if_unchanged(self, key: str, etag: str) -> bool:
        """Delete `key` only if it is still the version we read (a newer upload under
        the same name must survive). Returns whether it deleted."""
        info = self.head(key)
        if info is None or info.etag != etag:
            return False
        self.delete(key)
        return True

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def incomplete_writes(self) -> Iterator[IncompleteWrite]:
        """Writes begun and never finished (a process died mid-write); cleanup aborts old ones."""
        return iter(())

    def abort_write(self, write: IncompleteWrite) -> None:
        """Discard an unfinished write; one already gone is not an error."""


class LocalObjectStore(ObjectStore):
    """Objects as files below `root`; writes are atomic (temp file + rename)."""

    TMP_DIR = ".tmp"

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = Path(os.path.normpath(self.root / check_store_key(key)))
        if self.root not in path.parents or path.relative_to(self.root).parts[0] == self.TMP_DIR:
            raise ValueError(f"object key {key!r} escapes the storage root")
        return path

    @staticmethod
    def _info(key: str, stat: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=stat.st_size,
            etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
            last_modified=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC),
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk the deepest directory the prefix names, then filter by the full prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != self.TMP_DIR]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    try:
                        yield self._info(key, os.stat(os.path.join(dirpath, name)))
                    except FileNotFoundError:
                        continue  # deleted while we walked

    def head(self, key: str) -> ObjectInfo | None:
        try:
            path = self._path(key)
            if not path.is_file():
                return None
            return self._info(key, path.stat())
        except FileNotFoundError:
            return None

    @contextmanager
    def open_read(self, key: str, *, if_etag: str | None = None) -> Iterator[tuple[ObjectInfo, BinaryIO]]:
        try:
            src = open(self._path(key), "rb")
        except FileNotFoundError as err:
            raise ObjectChanged(key) from err
        with src:
            info = self._info(key, os.fstat(src.fileno()))
            if if_etag is not None and info.etag != if_etag:
                raise ObjectChanged(key)
            yield info, src

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        final = self._path(key)
        tmp_dir = self.root / self.TMP_DIR
        tmp_dir.mkdir(exist_ok=True)
        return final, tmp_dir / uuid.uuid4().hex

    def upload_file(self, path: str | Path, key: str, progress: Callable[[int], None] | None = None) -> None:
        final, tmp = self._atomic_target(key)
        shutil.copyfile(path, tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        if progress:
            progress(os.path.getsize(final))

    def open_write(self, key: str) -> "ObjectWriter":
        final, tmp = self._atomic_target(key)
        return _LocalWriter(final, tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        final, tmp = self._atomic_target(key)
        tmp.write_bytes(data)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def copy(self, src: str, dst: str) -> None:
        self.upload_file(self._path(src), dst)

    def incomplete_writes(self) -> Iterator[IncompleteWrite]:
        # Atomic writes go through .tmp/ and are renamed into place; what stays there died.
        tmp_dir = self.root / self.TMP_DIR
        if not tmp_dir.is_dir():
            return
        for entry in os.scandir(tmp_dir):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue  # renamed into place meanwhile
            if entry.is_file():
                yield IncompleteWrite("temporary_file", f"{self.TMP_DIR}/{entry.name}",
                                      datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC), stat.st_size, entry.name)

    def abort_write(self, write: IncompleteWrite) -> None:
        if write.kind == "temporary_file" and "/" not in write.ref:
            (self.root / self.TMP_DIR / write.ref).unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Keep the tree tidy: drop directories the delete left empty (never the root).
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    @property
    def filesystem(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def fs_path(self, key: str) -> str:
        return str(self._path(key))


class S3ObjectStore(ObjectStore):
    """A bucket (optionally below a prefix) on any S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str = "", *, session=None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._session = session or boto3.session.Session()
        # botocore's standard retry mode (throttling, 5xx, resets) with its own backoff;
        # path-style addressing works on AWS and on MinIO without wildcard DNS.
        self._client = self._session.client(
            "s3",
            config=Config(retries={"mode": "standard"}, s3={"addressing_style": "path"}),
        )
        self._fs: pafs.S3FileSystem | None = None

    def _k(self, key: str) -> str:
        return self.prefix + check_store_key(key)

    def _info(self, key: str, size: int, etag: str, last_modified: datetime) -> ObjectInfo:
        return ObjectInfo(key=key, size=size, etag=etag.strip('"'), last_modified=last_modified.astimezone(UTC))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", ()):
                key = obj["Key"][len(self.prefix):]
                yield self._info(key, obj["Size"], obj["ETag"], obj["LastModified"])

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return self._info(key, resp["ContentLength"], resp["ETag"], resp["LastModified"])

    def _get(self, key: str, if_etag: str | None = None) -> tuple[ObjectInfo, "_ResumableBody"]:
        kwargs = {"Bucket": self.bucket, "Key": self._k(key)}
        if if_etag is not None:
            kwargs["IfMatch"] = f'"{if_etag}"'
        resp = self._client.get_object(**kwargs)
        info = self._info(key, resp["ContentLength"], resp["ETag"], resp["LastModified"])
        return info, _ResumableBody(self._client, self.bucket, self._k(key), info, resp["Body"])

    @contextmanager
    def open_read(self, key: str, *, if_etag: str | None = None) -> Iterator[tuple[ObjectInfo, BinaryIO]]:
        from botocore.exceptions import ClientError

        try:
            info, body = self._get(key, if_etag)
        except ClientError as err:
            if _error_code(err) in _GONE + _PRECONDITION_FAILED:
                raise ObjectChanged(key) from err
            raise
        try:
            yield info, body
        finally:
            body.close()

    def upload_file(self, path: str | Path, key: str, progress: Callable[[int], None] | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        self._client.upload_file(
            str(path), self.bucket, self._k(key), Callback=progress,
            Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD),
        )

    def open_write(self, key: str) -> "ObjectWriter":
        return _S3Writer(self._client, self.bucket, self._k(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            _, body = self._get(key)
        except ClientError as err:
            if _error_code(err) in _GONE:
                raise FileNotFoundError(key) from err
            raise
        with body:
            return body.read()

    def copy(self, src: str, dst: str) -> None:
        # Managed copy: one CopyObject below 5 GB, multipart UploadPartCopy above.
        self._client.copy({"Bucket": self.bucket, "Key": self._k(src)}, self.bucket, self._k(dst))

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def incomplete_writes(self) -> Iterator[IncompleteWrite]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", ()):
                yield IncompleteWrite("multipart_upload", upload["Key"][len(self.prefix):],
                                      upload["Initiated"].astimezone(UTC), None, upload["UploadId"])

    def abort_write(self, write: IncompleteWrite) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(write.key), UploadId=write.ref)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchUpload"):
                raise

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: list[dict] = []
        for key in keys:
            batch.append({"Key": self._k(key)})
            if len(batch) == 1000:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                batch = []
        if batch:
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    @property
    def filesystem(self) -> pafs.S3FileSystem:
        if self._fs is None:
            self._fs = _pyarrow_s3(self._session, self._client)
        return self._fs

    def fs_path(self, key: str) -> str:
        return f"{self.bucket}/{self._k(key)}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, first start of MinIO)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)


_GONE = ("404", "NoSuchKey", "NotFound")
_PRECONDITION_FAILED = ("412", "PreconditionFailed")
READ_RESUMES = 5  # per GET body; as many as s3transfer's num_download_attempts


def _error_code(err) -> str | None:
    return err.response.get("Error", {}).get("Code")


def _body_errors() -> tuple[type[BaseException], ...]:
    """What reading a GET's body raises when the connection breaks after the headers:
    a reset, a body shorter than its Content-Length, a read timeout (s3transfer retries
    the same set). botocore's retries end when the headers have arrived, so these reach
    the caller (boto/boto3#4111)."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError

    return (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ProtocolError, ConnectionError,
            TimeoutError)


class _ResumableBody(io.RawIOBase):
    """An S3 GET's body that survives the connection breaking mid-body.

    Callers stream a body straight into a parser and a hash, so a break would otherwise
    fail the whole run after minutes of work, and re-reading from the start could feed
    the parser bytes twice. Instead the read continues with a Range GET from the offset
    reached, pinned (IfMatch) to the ETag of the first response: if the object was
    replaced meanwhile, that is ObjectChanged rather than a stream that is half one
    version and half the other. After READ_RESUMES breaks the error stands, and every
    later read raises it again (a parser that took it for bad input and read on must
    not see a clean end); the run fails cleanly and is retried as a whole.
    """

    def __init__(self, client, bucket: str, s3_key: str, info: ObjectInfo, body):
        super().__init__()
        self._client, self._bucket, self._s3_key, self._info, self._body = client, bucket, s3_key, info, body
        self._pos, self._resumes, self._failed = 0, 0, None
        self._errors = _body_errors()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while True:
            if self._failed is not None:
                raise self._failed
            try:
                data = self._body.read(size)
                if not data and size and self._pos < self._info.size:  # botocore checks this too; cheap
                    from botocore.exceptions import IncompleteReadError
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._info.size)
            except self._errors as err:
                self._resume(err)
                continue
            self._pos += len(data)
            return data

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(COPY_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _resume(self, err: Exception) -> None:
        from botocore.exceptions import ClientError

        self._body.close()
        if self._resumes >= READ_RESUMES:
            self._failed = err
            raise err
        self._resumes += 1
        # No backoff of our own: the break was one connection; the new GET gets
        # botocore's retries (and their backoff) if the endpoint is unwell.
        size = self._info.size
        try:
            resp = self._client.get_object(Bucket=self._bucket, Key=self._s3_key, Range=f"bytes={self._pos}-",
                                           IfMatch=f'"{self._info.etag}"')
        except Exception as gerr:
            if isinstance(gerr, ClientError) and _error_code(gerr) in _GONE + _PRECONDITION_FAILED:
                self._failed = ObjectChanged(self._info.key)
                raise self._failed from gerr
            self._failed = gerr  # botocore's retries of the new GET are spent too
            raise
        self._body = resp["Body"]
        if resp.get("ContentRange") != f"bytes {self._pos}-{size - 1}/{size}":  # a server that ignored Range
            self._body.close()
            self._failed = err
            raise err

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _pyarrow_s3(session, client) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured exactly as the boto3 client is."""
    kwargs: dict = {"region": client.meta.region_name or "us-east-1"}
    endpoint = urlparse(client.meta.endpoint_url)
    if endpoint.hostname and not endpoint.hostname.endswith("amazonaws.com"):
        kwargs["endpoint_override"] = endpoint.netloc
        kwargs["scheme"] = endpoint.scheme
    creds = session.get_credentials()
    if creds is None:
        kwargs["anonymous"] = True
    else:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    return pafs.S3FileSystem(**kwargs)


class ObjectWriter(io.RawIOBase):
    """See `ObjectStore.open_write`. Closing without `commit()` aborts."""

    def __init__(self):
        super().__init__()
        self._written = 0
        self._digest = hashlib.sha256()  # what the object will hold, for the catalog's integrity checks
        self.committed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # Parquet writers ask where they are
        return self._written

    def write(self, data) -> int:
        n = self._write(data)
        self._digest.update(data)
        self._written += n
        return n

    @property
    def sha256(self) -> str:
        """sha256 of the bytes written so far (after `commit()`: of the object)."""
        return self._digest.hexdigest()

    @property
    def size(self) -> int:
        return self._written

    def commit(self) -> None:
        """Make the bytes written the object (replacing any earlier one)."""
        self._commit()
        self.committed = True
        super().close()

    def abort(self) -> None:
        """Drop what was written; nothing appears. Does nothing after `commit()`."""
        if not self.committed and not self.closed:
            try:
                self._abort()
            finally:
                super().close()

    def close(self) -> None:
        self.abort()

    def __exit__(self, exc_type, exc, tb):
        self.abort()

    @abstractmethod
    def _write(self, data) -> int: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class _LocalWriter(ObjectWriter):
    """A temporary file renamed into place on commit."""

    def __init__(self, final: Path, tmp: Path):
        super().__init__()
        self._final, self._tmp = final, tmp
        self._file = open(tmp, "wb")

    def _write(self, data) -> int:
        return self._file.write(data)

    def _commit(self) -> None:
        self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, self._final)

    def _abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class _S3Writer(ObjectWriter):
    """A multipart upload fed as bytes arrive: each full part is sent by a background
    thread while the next one fills (at most PARTS_IN_FLIGHT waiting, to bound memory).
    The object appears only when the upload is completed; below one part it is a
    single PUT. An upload never completed is invisible (and expires by the bucket's
    lifecycle rule for incomplete multipart uploads)."""

    def __init__(self, client, bucket: str, key: str):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._sending: deque = deque()
        self._sender: ThreadPoolExecutor | None = None

    def _write(self, data) -> int:
        n = memoryview(data).nbytes
        self._buffer += data
        # parts grow after every 1,000 so that 10,000 (S3's limit) hold 400+ GB
        if len(self._buffer) >= PART_BYTES * (1 + len(self._parts) // 1000):
            self._send(self._buffer)  # handed over whole, not copied: a new buffer fills
            self._buffer = bytearray()
        return n

    def _send(self, body: bytearray) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-parts")
        while len(self._sending) >= PARTS_IN_FLIGHT:
            self._sending.popleft().result()
        number = len(self._parts) + 1
        part = {"PartNumber": number}
        self._parts.append(part)

        def send() -> None:
            resp = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                            PartNumber=number, Body=body)
            part["ETag"] = resp["ETag"]
        self._sending.append(self._sender.submit(send))

    def _commit(self) -> None:
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=self._buffer)
            return
        if self._buffer:
            self._send(self._buffer)
            self._buffer = bytearray()
        while self._sending:
            self._sending.popleft().result()
        self._sender.shutdown()
        self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                               MultipartUpload={"Parts": self._parts})

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        self._sender.shutdown(cancel_futures=True)  # waits for the part being sent
        self._sending.clear()
        self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)


class HashingReader(io.RawIOBase):
    """Pass a stream through, computing its sha256 on the way (so one GET can feed a
    parser and the content hash at once)."""

    def __init__(self, src):
        self._src = src
        self._digest = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # A short read (allowed: buffered readers ask again) of at most READ_CHUNK: asked
        # for a 16 MB block at once, the HTTP stream built a 16 MB bytes object (and the
        # parts it joined) per block, only to copy it into the block.
        data = self._src.read(min(len(buffer), READ_CHUNK))
        n = len(data)
        buffer[:n] = data
        self._digest.update(data)
        self.bytes_read += n
        return n

    def hexdigest(self) -> str:
        """The hash of the whole stream: reads (and hashes) whatever is left first."""
        while self._src_read_rest():
            pass
        return self._digest.hexdigest()

    def _src_read_rest(self) -> bool:
        chunk = self._src.read(COPY_CHUNK)
        self._digest.update(chunk)
        self.bytes_read += len(chunk)
        return bool(chunk)



def open_store(url: str) -> ObjectStore:
    """`s3://bucket[/prefix]`, `file:///path` or a plain local path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3ObjectStore(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalObjectStore(parsed.path)
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalObjectStore(url)
    raise ValueError(f"unsupported storage URL {url!r}: use a path, file:///path or s3://bucket[/prefix]")
