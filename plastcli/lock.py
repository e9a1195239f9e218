"""One writer per store: an exclusive lock file ``<store>.lock`` next to the store.

The lock is an ``flock`` on that file, held for the whole run, so the kernel drops it
when the writer dies however it dies (SIGKILL included); the file's text (pid, host,
process start time, date) only names the holder in messages. A lock file left behind
by a dead writer is therefore not held, and the next writer takes it over and says so.
Within one process the lock is re-entrant (ablate-layers holds it around the
meta-training run it wraps). Readers never take the lock: :func:`holder` reads the
file's text and checks, on this host, whether that process is still alive.

Nothing here imports torch.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plastcli.errors import PlastError
from plastcli.paths import make_dirs, remove_empty


def lock_path(store: str | Path) -> Path:
    """The lock file of a store: ``<store>.lock``."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ('' where unknown);
    with the pid it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5)


@dataclass
class Holder:
    """Who wrote a lock file: pid, host, process start time, date."""

    pid: int
    host: str
    start: str
    since: str

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _start_time(pid),
                   _dt.datetime.now().astimezone().isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return cls(int(fields["pid"]), fields.get("host", "?"), fields.get("start", ""),
                       fields.get("since", "?"))
        except (KeyError, ValueError):
            return None

    def text(self) -> str:
        return f"pid={self.pid}\nhost={self.host}\nstart={self.start}\nsince={self.since}\n"

    def alive(self) -> bool | None:
        """Whether the holder still runs: True/False on this host, None on another."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, belongs to another user
            return True
        return not self.start or _start_time(self.pid) == self.start

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}"


def holder(store: str | Path) -> tuple[Holder, bool | None] | None:
    """(holder, alive) of a store's lock file, or None when there is none. For readers:
    it reads the file and never locks it, so it cannot get in a writer's way."""
    try:
        text = lock_path(store).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    h = Holder.parse(text)
    return None if h is None else (h, h.alive())


# path -> [fd, depth, directories made for it] of the locks this process holds
_HELD: dict[str, list] = {}


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _open_locked(path: Path, store: str | Path) -> tuple[int, str]:
    """Open and flock the lock file; return (fd, its previous text). Raise PlastError
    when a live writer holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = _read_fd(fd)
            os.close(fd)
            h = Holder.parse(text)
            who = f" ({h.describe()})" if h else ""
            raise PlastError(f"{store} is being written by another plast "
                             f"run{who}; wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we opened it
            return fd, _read_fd(fd)
        os.close(fd)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


def acquire(store: str | Path, warn: Callable[[str], None] = _warn) -> None:
    """Take the store's lock (re-entrant within this process); a stale lock file left by
    a dead writer is taken over with a message through ``warn``."""
    path = lock_path(store)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    made = make_dirs(path.parent)
    try:
        fd, old = _open_locked(path, store)
    except OSError as exc:
        remove_empty(made)
        raise PlastError(f"cannot write {store}: {exc.strerror or exc}") from None
    except BaseException:
        remove_empty(made)
        raise
    prev = Holder.parse(old)
    if prev is not None and prev.pid != os.getpid():
        warn(f"taking over the stale lock {path} of a run that is no longer running "
             f"({prev.describe()})")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, Holder.me().text().encode())
    _HELD[key] = [fd, 1, made]


def release(store: str | Path) -> None:
    """Drop one level of the store's lock; the last one unlinks the file and unlocks."""
    path = lock_path(store)
    key = os.path.realpath(path)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    try:
        os.unlink(path)  # unlink before unlocking: a waiter then sees a fresh file
    except FileNotFoundError:
        pass
    os.close(entry[0])
    remove_empty(entry[2])


def held(store: str | Path) -> bool:
    """Whether this process holds the store's lock."""
    return os.path.realpath(lock_path(store)) in _HELD


@contextmanager
def store_lock(store: str | Path) -> Iterator[None]:
    """Hold the store's lock for the block."""
    acquire(store)
    try:
        yield
    finally:
        release(store)
