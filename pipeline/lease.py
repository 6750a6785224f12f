"""One writer per output: a run holds a lease on its output location while it works.

The lease is `<output>/_lease.json` (readers skip `_` names): the owner's run id, host, process id, start time
and heartbeat. It is taken atomically, with the store's conditional write where it has one:

- S3 (and S3-compatible stores that implement it): PUT with `If-None-Match: *` to create, `If-Match: <etag>` to
  renew or take over, so of two runs racing for it exactly one wins;
- a local folder: every read-compare-write happens under an exclusive `flock` on `<output>/_lease.lock`;
- other fsspec stores: write, then read back and check (best effort: two runs starting in the same second could
  both believe they won).

A second run on the same output stops before any work (`OutputBusy`, one line naming the running run and since
when). A lease whose heartbeat is older than `output.lease_stale_s`, or whose process is gone from this very
host, belonged to a run that died: it is taken over, so resuming after a crash stays automatic. The running job
renews the heartbeat from a thread every quarter of `lease_stale_s`; if it finds the lease taken by another run
(its own heartbeat stalled longer than that) it interrupts the run (`LeaseLost`), since it no longer owns the
output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.storage import S3_PROTOCOLS, open_fs

logger = logging.getLogger(__name__)

LEASE = "_lease.json"
LOCK = "_lease.lock"


class OutputBusy(Exception):
    """Another run holds the output's lease; the message is one line for the user."""


class LeaseLost(Exception):
    """This run's lease was taken over by another run while it worked."""


@dataclass
class Holder:
    run_id: str
    host: str
    pid: int
    started_at: str  # ISO 8601, UTC
    heartbeat_at: str

    def heartbeat_age_s(self, now: datetime | None = None) -> float:
        return ((now or _now()) - datetime.fromisoformat(self.heartbeat_at)).total_seconds()

    def gone_from_this_host(self) -> bool:
        """Its process is known to be dead: it ran on this host and no process has its id any more."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # exists, owned by someone else
        return False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        return cls(**json.loads(data))


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- where the lease file lives: read, create-if-absent, swap-if-unchanged, delete --------------------------------

class _S3Store:
    """Conditional PUTs. A write whose answer was lost (a reset connection) and was retried by the client can be
    refused although the first attempt landed: every refusal is checked against what the store now holds."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    def read(self) -> tuple[bytes, str] | None:
        for attempt in range(5):
            self.fs.invalidate_cache(self.path)
            try:
                # The file object reads with If-Match on the ETag it saw when opening: content and tag agree,
                # and a file replaced in between is refused (412 / s3fs's FileExpired), then read again.
                with self.fs.open(self.path, "rb") as f:
                    return f.read(), f.details["ETag"]
            except FileNotFoundError:
                return None
            except OSError as e:
                if not (_precondition_failed(e) or e.errno == errno.EBUSY) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _landed(self, data: bytes) -> str | None:
        now = self.read()
        return now[1] if now is not None and now[0] == data else None

    def create(self, data: bytes) -> str | None:
        try:
            return self.fs.pipe_file(self.path, data, mode="create")["ETag"]
        except FileExistsError:
            return self._landed(data)

    def swap(self, data: bytes, token: str) -> str | None:
        try:
            return self.fs.pipe_file(self.path, data, IfMatch=token)["ETag"]
        except FileNotFoundError:
            return self._landed(data)
        except OSError as e:
            if not _precondition_failed(e):
                raise
            return self._landed(data)

    def delete(self) -> None:
        self.fs.rm(self.path)


def _precondition_failed(e: OSError) -> bool:
    cause = getattr(e.__cause__, "response", None) or {}
    return cause.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or e.errno == errno.EINVAL


class _LocalStore:
    """A local folder: each operation under an exclusive lock; the file replaced whole (write, then rename)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = posixpath.join(posixpath.dirname(path), LOCK)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes) -> str:
        staged = f"{self.path}.{os.getpid()}.tmp"
        with open(staged, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, self.path)
        return hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        with self._locked():
            return self._read()

    def create(self, data: bytes) -> str | None:
        with self._locked():
            return None if self._read() is not None else self._write(data)

    def swap(self, data: bytes, token: str) -> str | None:
        with self._locked():
            now = self._read()
            return self._write(data) if now is not None and now[1] == token else None

    def delete(self) -> None:
        with self._locked(), contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


class _CheckedStore:
    """Any other fsspec store: no conditional write; write, then read back what landed."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    def read(self) -> tuple[bytes, str] | None:
        self.fs.invalidate_cache(self.path)
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes) -> str | None:
        self.fs.pipe_file(self.path, data)
        now = self.read()
        return now[1] if now is not None and now[0] == data else None

    def create(self, data: bytes) -> str | None:
        return None if self.read() is not None else self._write(data)

    def swap(self, data: bytes, token: str) -> str | None:
        now = self.read()
        return self._write(data) if now is not None and now[1] == token else None

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)


def _store(uri: str, storage: dict | None):
    fs, root = open_fs(uri, storage)
    path = posixpath.join(root, LEASE)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if uri.startswith(S3_PROTOCOLS) or "s3" in protocols:
        return _S3Store(fs, path)
    if "file" in protocols or "local" in protocols:
        return _LocalStore(path)
    fs.makedirs(root, exist_ok=True)
    return _CheckedStore(fs, path)


# -- the lease -----------------------------------------------------------------------------------------------------

class OutputLease:
    """The lease on one output for one run, for a `with`: taken on entry (or OutputBusy), renewed by a thread,
    given back on exit (the file deleted if it is still this run's)."""

    def __init__(self, uri: str, run_id: str, *, stale_s: float, wait_s: float = 0.0,
                 storage: dict | None = None):
        self.uri, self.run_id, self.stale_s, self.wait_s = uri, run_id, stale_s, wait_s
        self.store = _store(uri, storage)
        now = _now().isoformat(timespec="seconds")
        self.holder = Holder(run_id, socket.gethostname(), os.getpid(), now, now)
        self.token: str | None = None
        self.lost: str | None = None  # why, once another run took the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, waiting up to `wait_s` for a live holder to finish or go stale; else OutputBusy."""
        deadline = time.monotonic() + self.wait_s
        while True:
            busy = self._try_acquire()
            if busy is None:
                break
            if time.monotonic() >= deadline:
                raise OutputBusy(busy)
            time.sleep(min(5.0, max(0.5, self.stale_s / 10)))
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="output-lease")
        self._thread.start()

    def _try_acquire(self) -> str | None:
        """None once the lease is this run's, else why not (one line)."""
        data = self.holder.to_bytes()
        token = self.store.create(data)
        if token is None:
            current = self.store.read()
            if current is None:  # given back just now: try again at once
                return self._try_acquire()
            raw, seen = current
            try:
                other = Holder.from_bytes(raw)
            except (ValueError, TypeError):
                other = None  # unreadable: not a live run's, take it
            if other is not None and other.run_id == self.run_id:
                token = seen
            elif other is not None and not self._dead(other):
                return (f"output {self.uri} is in use by run {other.run_id} on {other.host} (pid {other.pid}) "
                        f"since {other.started_at}, last heartbeat {other.heartbeat_age_s():.0f} s ago; "
                        f"it is taken over once that is older than output.lease_stale_s={self.stale_s:g} s")
            else:
                token = self.store.swap(data, seen)
                if token is None:  # another run took it over first
                    return self._try_acquire()
                if other is not None:
                    logger.warning("took over the lease on %s from run %s (host %s, last heartbeat %.0f s ago)",
                                   self.uri, other.run_id, other.host, other.heartbeat_age_s())
        self.token = token
        return None

    def _dead(self, other: Holder) -> bool:
        return other.heartbeat_age_s() > self.stale_s or other.gone_from_this_host()

    def renew(self) -> bool:
        """Write a new heartbeat; False if another run holds the lease now."""
        self.holder.heartbeat_at = _now().isoformat(timespec="seconds")
        token = self.store.swap(self.holder.to_bytes(), self.token)
        if token is None:
            current = self.store.read()
            holder = Holder.from_bytes(current[0]).run_id if current else "nobody"
            self.lost = f"the lease on {self.uri} was taken over by run {holder}"
            return False
        self.token = token
        return True

    def _heartbeat(self) -> None:
        period = self.stale_s / 4
        while not self._stop.wait(period):
            try:
                if not self.renew():
                    logger.error("%s: this run stops", self.lost)
                    # A real SIGINT (not _thread.interrupt_main), so a main thread blocked in a wait wakes too.
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    return
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again next beat; stale only after 4 misses
                logger.warning("could not renew the lease on %s: %s", self.uri, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lost or self.token is None:
            return
        try:
            current = self.store.read()
            if current is not None and Holder.from_bytes(current[0]).run_id == self.run_id:
                self.store.delete()
        except Exception as e:  # noqa: BLE001 - the run's rows stand; the lease goes stale by itself
            logger.warning("could not give back the lease on %s: %s", self.uri, e)


def read_holder(uri: str, storage: dict | None = None) -> Holder | None:
    """Who holds the output's lease now, if anyone (for tests and tools)."""
    current = _store(uri, storage).read()
    return Holder.from_bytes(current[0]) if current else None
