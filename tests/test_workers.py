"""Population parts in worker processes: same numbers, errors surface, tensors survive,
a small /dev/shm falls back to one process."""

from __future__ import annotations

import copy
import math
import threading
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from test_engine import _adjoint_args, _assert_same_meta_outputs

from plastcli.core.network import Net
from plastcli.engine import cores, parallel, pool, workers
from plastcli.experiments import meta_train
from plastcli.recipes import load_recipe
from plastcli.results.store import read_store


def test_split_is_contiguous_and_nearly_equal():
    assert workers.split(16, 2) == [slice(0, 8), slice(8, 16)]
    parts = workers.split(11, 3)
    assert [p.stop - p.start for p in parts] == [3, 4, 4]  # the calling process gets less
    assert parts[0].start == 0 and parts[-1].stop == 11
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))


def test_processes_follow_threads_free_cores_and_part_size(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cores, "free_cores_recent", lambda: 1)  # another job holds a core
    assert workers.processes_for(16, "cpu") == 1
    monkeypatch.setattr(cores, "free_cores_recent", lambda: 4)
    assert workers.processes_for(16, "cpu") == 2
    assert workers.processes_for(7, "cpu") == 1  # parts would be smaller than MIN_PART
    assert workers.processes_for(16, "meta") == 1  # not the CPU: one batch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert workers.processes_for(64, "cpu") == 1  # OMP_NUM_THREADS=1: stay on one core


def test_tensors_and_nested_objects_round_trip_through_a_worker():
    net = Net(W=[torch.arange(6.0).view(1, 2, 3)[..., 1:]], Bf=None)  # a view, not contiguous
    args = ((torch.tensor([1, 2, 3]), torch.zeros(0), net, torch.ones(2, dtype=torch.float64)),)
    out = workers.run_parts(copy.copy, [args, args, args])  # a function the worker can import
    for got in out:
        assert torch.equal(got[0], args[0][0]) and got[0].dtype == torch.int64
        assert got[1].shape == (0,)
        assert torch.equal(got[2].W[0], net.W[0]) and got[2].Bf is None
        assert got[3].dtype == torch.float64


def test_workers_run_one_thread():
    assert workers.run_parts(torch.get_num_threads, [(), (), ()])[1:] == [1, 1]


def test_a_failing_worker_raises_here_and_the_next_call_starts_afresh():
    with pytest.raises(RuntimeError, match="math domain error"):
        workers.run_parts(math.sqrt, [(4.0,), (-1.0,)])
    assert workers.run_parts(math.sqrt, [(4.0,), (9.0,)]) == [2.0, 3.0]


def test_population_split_across_processes_gives_the_same_numbers():
    args = _adjoint_args([3, 4, 5, 6, 7])
    one = parallel.meta_loss_and_coef_grad(*args, processes=1, engine="reference")
    two = parallel.meta_loss_and_coef_grad(*args, processes=2, engine="reference")
    again = parallel.meta_loss_and_coef_grad(*args, processes=2, engine="reference")
    _assert_same_meta_outputs(two, one)
    assert torch.equal(again[2], two[2])  # the same split gives the same numbers
    assert two[2].abs().max() > 0


def test_peak_memory_is_reported_for_this_process_and_each_worker():
    here, there = workers.run_parts(workers.peak_rss_mib, [(), ()])
    assert here > 50 and there > 50  # both have torch loaded: tens of MiB at least
    assert workers.peak_rss_all_mib() >= here


def test_replies_are_copies_that_later_calls_cannot_overwrite():
    small = {"a": torch.ones(4)}
    first = workers.run_parts(copy.copy, [(small,), (small,)])
    big = {"a": torch.full((300_000,), 7.0)}  # a bigger reply: the worker's block is replaced
    workers.run_parts(copy.copy, [(big,), (big,)])
    again = workers.run_parts(copy.copy, [(big,), ({"a": torch.zeros(2)},)])  # block reused
    assert torch.equal(first[1]["a"], torch.ones(4))
    assert torch.equal(again[1]["a"], torch.zeros(2))


def test_unpicklable_result_is_reported_as_the_workers_error():
    with pytest.raises(RuntimeError, match="pickle"):
        workers.run_parts(threading.Lock, [(), ()])
    assert workers.run_parts(math.sqrt, [(1.0,), (16.0,)]) == [1.0, 4.0]


def test_an_error_here_stops_a_busy_worker_at_once():
    t0 = time.perf_counter()
    with pytest.raises(TypeError):
        workers.run_parts(time.sleep, [("not a number",), (30,)])
    assert time.perf_counter() - t0 < 8  # the sleeping worker was terminated, not awaited
    assert workers.run_parts(math.sqrt, [(9.0,), (4.0,)]) == [3.0, 2.0]


def test_nested_or_concurrent_calls_run_here_one_after_another():
    with workers._lock:  # as if another call were using the workers
        assert workers.run_parts(math.sqrt, [(4.0,), (9.0,)]) == [2.0, 3.0]


def test_too_little_shared_memory_falls_back_to_one_process(monkeypatch):
    def full(nbytes):
        raise workers.ShmTooSmall("shared memory cannot hold 1 MiB (No space left on device)")

    workers.shutdown()
    monkeypatch.setattr(pool, "_shared_block", full)
    with pytest.warns(UserWarning, match="running the population in one process"):
        out = workers.run_parts(copy.copy, [((torch.ones(3),),), ((torch.zeros(3),),)])
    assert torch.equal(out[1][0], torch.zeros(3))



TINY_META = ["network.layers=[784,32,24,47]", "task.classes=3", "task.train_per_class=4",
             "task.query_per_class=2", "population.seeds=8", "meta.episodes=2",
             "run.checkpoint_every=2", "run.device=cpu"]


def _meta_train_arrays(path) -> dict:
    meta_train.run(load_recipe(REPO / "recipes/bio.yaml", TINY_META), path)
    st = read_store(path)
    assert st.complete
    return {k: v for k, v in st.arrays.items()
            if k.startswith("episodes/") and k != "episodes/seconds"}


def test_meta_training_in_worker_processes_gives_the_numbers_of_one_process(
        tmp_path, monkeypatch):
    """P = 8 in 2 processes (4 members each), and the same parts run one after another in
    this process on one thread: the same numbers bit for bit. (At 57f285f the pool and the
    hand-made pipes it replaced gave the same bits too.)"""
    monkeypatch.setenv("PLAST_ENGINE", "reference")  # the processes are its population split
    monkeypatch.setattr(workers, "processes_for", lambda P, device: 2)
    workers.shutdown()
    split = _meta_train_arrays(tmp_path / "split.h5")
    assert pool.workers()  # a worker ran the second part

    def here(fn, calls):  # each part alone with one thread, in this process
        with pool._threads(1):
            return [fn(*args) for args in calls]

    monkeypatch.setattr(workers, "run_parts", here)
    one = _meta_train_arrays(tmp_path / "here.h5")
    assert "episodes/theta" in one and one["episodes/theta"].shape == (8, 2, 3)
    assert set(split) == set(one)
    for k in one:
        np.testing.assert_array_equal(split[k], one[k], err_msg=k)


CTRL_C = """
import math, sys, time
from plastcli.engine import pool, workers
workers.run_parts(math.sqrt, [(4.0,), (9.0,), (1.0,)])  # two workers; one stays idle
print(*pool.workers(), flush=True)
try:
    workers.run_parts(time.sleep, [(60,), (60,)])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_the_run_and_its_workers_quietly():
    """SIGINT to the whole process group (a terminal's Ctrl-C) while a worker is busy:
    the parent gets the KeyboardInterrupt, the workers (busy or idle) neither print a
    traceback nor outlive it."""
    import os
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", CTRL_C], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert pids, p.stderr.read()
        time.sleep(1.0)  # the parent is in the second call now
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "interrupted" in out
    assert not err.strip(), err  # not even "Process SpawnProcess-2:" of a worker cut short
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
