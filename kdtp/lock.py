"""One run, one trainer: a lock file beside the checkpoints, safe on Google Drive.

Two notebooks (or two Colab runtimes sharing a Drive folder) asking for the same run must
not both train it. The first takes ``<folder>/<stem>.lock``, created with ``O_EXCL`` (an
atomic "create if absent" that also works on synced folders where ``flock`` does not, such
as Drive's FUSE mount), holding host, pid, start time and a heartbeat it refreshes while
it trains. Another process asking for the run says who holds it, waits, and loads the
result when the lock goes away. A lock whose holder is gone is taken over: on the same
host when its pid is dead (at once), on another host when its heartbeat is older than
``KDTP_LOCK_STALE_S`` seconds (default 300). So a kill -9 never blocks a run for good, and
the new holder resumes from ``<stem>_last.pt``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 20.0
POLL_S = 2.0
DEFAULT_STALE_S = 300.0
_HOST = socket.gethostname()


def stale_after() -> float:
    """Seconds without a heartbeat after which another host's lock counts as abandoned."""
    raw = os.environ.get("KDTP_LOCK_STALE_S", "").strip()
    if not raw:
        return DEFAULT_STALE_S
    try:
        value = float(raw)
    except ValueError:
        from .env import ConfigError
        raise ConfigError(f"KDTP_LOCK_STALE_S={raw!r} is not a number of seconds (e.g. 300)") from None
    return max(1.0, value)


def _now() -> float:
    return time.time()


def _stamp(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_lock(path: Path) -> dict | None:
    """The holder's record, ``{}`` for a lock being written (or unreadable), None if absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def why_stale(path: Path, info: dict) -> str | None:
    """Why the lock's holder is gone, or None while it may still be training."""
    try:
        age = _now() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if not info:
        return f"it has been unreadable for {age:.0f} s" if age > 10 else None
    beat = float(info.get("heartbeat", 0) or 0)
    if info.get("host") == _HOST and not _pid_alive(int(info.get("pid", -1))):
        return f"its process (pid {info.get('pid')} on this machine) is no longer running"
    if _now() - beat > stale_after():
        return (f"its heartbeat is {_now() - beat:.0f} s old (host {info.get('host')}, pid {info.get('pid')}; "
                f"KDTP_LOCK_STALE_S={stale_after():.0f})")
    return None


def describe_holder(info: dict) -> str:
    if not info:
        return "another process (its lock is being written)"
    return (f"{'this machine' if info.get('host') == _HOST else info.get('host')}, pid {info.get('pid')}, "
            f"since {_stamp(float(info.get('started', 0)))}")


class LockUnavailable(OSError):
    """The folder takes no new file (read-only, full): the run trains without a lock."""


class RunLock:
    """The lock of one run (``stem``) in one folder; ``acquire`` never waits."""

    def __init__(self, folder: Path | str, stem: str):
        self.path = Path(folder) / f"{stem}.lock"
        self.stem = stem
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, started: float) -> bytes:
        return json.dumps({"host": _HOST, "pid": os.getpid(), "token": self.token, "run": self.stem,
                           "started": started, "heartbeat": _now()}).encode()

    def acquire(self) -> bool:
        """Create the lock if nobody holds it; True when this process now holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:          # read-only or full folder: train without a lock
            raise LockUnavailable(f"cannot create {self.path} ({exc.strerror or exc})") from None
        self._started = _now()
        try:
            os.write(fd, self._record(self._started))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"kdtp-lock-{self.stem}", daemon=True)
        self._thread.start()
        return True

    def holds(self) -> bool:
        info = read_lock(self.path)
        return bool(info) and info.get("token") == self.token

    def _beat(self) -> None:
        """Refresh the heartbeat while this process holds the lock (stop if it lost it)."""
        while not self._stop.wait(HEARTBEAT_S):
            if not self.holds():
                return
            tmp = self.path.with_name(f".{self.path.name}.{self.token[:8]}.tmp")   # a temp file, by the kit's rule
            try:
                tmp.write_bytes(self._record(self._started))
                os.replace(tmp, self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def take_over(self, why: str) -> bool:
        """Move an abandoned lock aside (atomic rename: one taker wins), then acquire."""
        aside = self.path.with_name(f".{self.path.name}.stale-{self.token[:8]}.tmp")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return self.acquire()
        with contextlib.suppress(OSError):
            aside.unlink()
        return self.acquire()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.holds():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def hold(folder: Path | str, stem: str, log=print, poll_s: float = POLL_S):
    """Hold ``stem``'s lock for the block; yields True when another process held it first.

    While another live process holds it: say who, wait (a line every minute), and take
    it when it is released (the caller then finds the finished run and loads it) or
    abandoned (the caller resumes from ``_last.pt``).
    """
    lock = RunLock(folder, stem)
    waited = False
    started_wait = last_line = _now()
    try:
        got = lock.acquire()
    except LockUnavailable as exc:
        log(f"{stem}: {exc}; training without a lock (another notebook could train this run too)")
        yield False
        return
    while not got:
        got = lock.acquire()
        if got:
            break
        info = read_lock(lock.path)
        if info is None:
            continue                       # released between our two calls: try again
        why = why_stale(lock.path, info)
        if why is not None:
            log(f"{stem}: taking over the lock of {describe_holder(info)}: {why}. Training resumes "
                f"from its last finished epoch.")
            got = lock.take_over(why)
            waited = True          # the holder may have finished before it died: look first
            continue
        if not waited:
            log(f"{stem} is being trained by {describe_holder(info)}; waiting for it to finish, then "
                f"loading its result (Ctrl-C stops waiting; nothing is lost).")
            waited = True
        elif _now() - last_line >= 60:
            log(f"{stem}: still waiting for {describe_holder(info)} ({(_now() - started_wait) / 60:.0f} min)")
            last_line = _now()
        time.sleep(poll_s)
    try:
        yield waited
    finally:
        lock.release()


def live_holder(folder: Path | str, stem: str) -> dict | None:
    """The record of a live process holding ``stem``'s lock, else None (no lock, or stale)."""
    path = Path(folder) / f"{stem}.lock"
    info = read_lock(path)
    if info is None or why_stale(path, info) is not None:
        return None
    return info
