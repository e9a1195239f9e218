"""How many cores are free now: a probe of /proc/stat (Linux) or the load average.

No torch here, so that the CLI can start the probe in the background before torch is
imported (:func:`start_probe`): the probe then costs no wall time. Our own process's CPU
time over the probe is not counted as busy (the import runs meanwhile).
"""

from __future__ import annotations

import os
import threading
import time

PROBE_S = 0.05  # a probe on the critical path
BACKGROUND_PROBE_S = 0.25  # one that overlaps the import: longer, so ticks matter less
MAX_AGE_S = 10.0  # one probe serves this long (a test run builds many trainers)

_lock = threading.Lock()
_recent: tuple[float, int] | None = None  # (when, free cores)
_probe: threading.Thread | None = None


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """{cpu: (busy ticks, all ticks)} for the given cpus from /proc/stat; None without it."""
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
    except OSError:
        return None
    out = {}
    for parts in lines:
        cpu = int(parts[0][3:])
        if cpu in cpus:
            t = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
            out[cpu] = (sum(t) - t[3] - t[4], sum(t))
    return out or None


def _own_cpu_s() -> float:
    """CPU seconds this process has used (all its threads)."""
    return time.process_time()


_wall = time.monotonic  # the probe's clock (tests replace it, not time.monotonic itself)
_sleep = time.sleep


def free_cores(probe_s: float = PROBE_S) -> int:
    """Cores this process may use that no other job holds now, at least 1: the cores of
    its affinity mask less those busy over a ``probe_s`` probe of /proc/stat (Linux), not
    counting this process's own use over the probe, or less the one-minute load average
    elsewhere (which lags a minute behind)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else \
        set(range(os.cpu_count() or 1))
    n = max(1, len(cpus))
    before = _cpu_times(cpus)
    if before is not None:
        own0, t0 = _own_cpu_s(), _wall()
        _sleep(probe_s)
        after = _cpu_times(cpus) or {}
        own = (_own_cpu_s() - own0) / max(_wall() - t0, 1e-3)
        busy = sum((after[c][0] - b[0]) / max(1, after[c][1] - b[1])
                   for c, b in before.items() if c in after)
        busy = max(0.0, busy - own)
    else:
        try:
            busy = os.getloadavg()[0]
        except OSError:  # not available on this platform
            busy = 0.0
    return max(1, min(n, n - int(busy + 0.5)))


def _remember(probe_s: float) -> None:
    global _recent
    found = free_cores(probe_s)
    with _lock:
        _recent = (time.monotonic(), found)


def start_probe() -> None:
    """Probe the free cores in a background thread (the CLI calls this before importing
    torch); :func:`free_cores_recent` waits for it."""
    global _probe
    with _lock:
        if _probe is None and _recent is None:
            _probe = threading.Thread(target=_remember, args=(BACKGROUND_PROBE_S,),
                                      name="plast-core-probe", daemon=True)
            _probe.start()


def free_cores_recent(max_age_s: float = MAX_AGE_S) -> int:
    """:func:`free_cores`, probed at most once per ``max_age_s``: the background probe's
    answer where one ran (waited for), else a probe now."""
    global _probe
    with _lock:
        probe, _probe = _probe, None
    if probe is not None:
        probe.join()
    with _lock:
        recent = _recent
    if recent is None or time.monotonic() - recent[0] > max_age_s:
        _remember(PROBE_S)
        with _lock:
            recent = _recent
    return recent[1]
