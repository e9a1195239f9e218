"""Resume for the online experiments (issue 11): a ``plast baseline``, ``init-study`` or
``rnn-memory`` run killed with SIGKILL in its grid stage or in its final stage continues
with ``--resume`` to a store equal, bit for bit, to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.experiments.checkpoints import Checkpoints, checkpoint_path
from plastcli.lock import lock_path
from plastcli.results.store import read_store

SMALL_FF = ["network.layers=[784, 16, 10]", "online.val_size=100",
            "online.update_norm_samples=4", "online.recon_images=2", "online.eval_every=1000",
            "selection.heldout=500", "selection.seeds=1", "population.seeds=2",
            "run.checkpoint_every=150", "run.device=cpu"]
CASES = {
    "baseline": ("recipes/2024/fig1-depth5.yaml", SMALL_FF, 1500),
    "init-study": ("recipes/2024/fig5-naive-init.yaml", SMALL_FF, 1000),
    "rnn-memory": ("recipes/2024/fig7-rnn-tanh-xavier.yaml",
                   ["network.hidden=[8]", "task.T=6", "task.present=2", "online.val_size=100",
                    "online.eval_every=500", "selection.heldout=500", "selection.seeds=1",
                    "population.seeds=2", "run.checkpoint_every=100", "run.device=cpu"], 1000),
}
# the checkpoint unit of each stage: baseline's first group, rnn-memory's only hidden size
UNITS = {("baseline", "grid"): "grid0", ("baseline", "final"): "final0",
         ("init-study", "grid"): "grid0", ("init-study", "final"): "final1",
         ("rnn-memory", "grid"): "grid-h8", ("rnn-memory", "final"): "final-h8"}


def cli_args(kind: str, out, *extra: str) -> list[str]:
    recipe, sets, samples = CASES[kind]
    args = [kind, str(REPO / recipe), "--out", str(out), "--samples", str(samples), *extra]
    for s in [*sets, f"selection.samples={samples}"]:
        args += ["--set", s]
    return args


def saved_units(out) -> set[str]:
    """Keys of the checkpoint beside ``out`` (empty while there is none)."""
    try:
        with np.load(checkpoint_path(out)) as z:
            return set(z.files)
    except (OSError, ValueError, EOFError):  # none yet, or being replaced: read it again
        return set()


def kill_when_saved(kind: str, out, key: str, timeout: float = 240.0) -> None:
    """Start the command, SIGKILL it as soon as its checkpoint holds ``key``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "plastcli", *cli_args(kind, out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    while key not in saved_units(out):
        if proc.poll() is not None:
            raise AssertionError(f"{kind} exited with {proc.returncode} before {key}: "
                                 f"{proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {key} in the checkpoint after {timeout} s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def store_arrays(path) -> dict[str, np.ndarray]:
    return read_store(path).arrays


@pytest.mark.parametrize("stage", ["grid", "final"])
@pytest.mark.parametrize("kind", list(CASES))
def test_an_online_run_killed_in_a_stage_resumes_to_the_uninterrupted_numbers(
        kind, stage, tmp_path):
    out = tmp_path / "killed.h5"
    unit = UNITS[kind, stage]
    kill_when_saved(kind, out, f"{unit}:at")
    assert read_store(out).status == "running"  # SIGKILL: no chance to say anything
    keys = saved_units(out)
    assert f"{unit}:finished" not in keys, "killed too late to test this stage"
    r = CliRunner().invoke(app, cli_args(kind, out, "--resume"))
    assert r.exit_code == 0, r.output
    assert read_store(out).complete
    assert not checkpoint_path(out).exists() and not lock_path(out).exists()

    fresh = tmp_path / "fresh.h5"
    r = CliRunner().invoke(app, cli_args(kind, fresh))
    assert r.exit_code == 0, r.output
    a, b = store_arrays(fresh), store_arrays(out)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_refuses_a_complete_online_store_and_a_changed_recipe(tmp_path):
    out = tmp_path / "done.h5"
    args = cli_args("rnn-memory", out)
    args[args.index("--samples") + 1] = "300"
    assert CliRunner().invoke(app, args).exit_code == 0
    r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 2 and "already complete" in r.output
    r = CliRunner().invoke(app, [*args[:-2], "--set", "run.checkpoint_every=7", "--set",
                                 "task.T=7", "--resume"])
    assert r.exit_code == 2


def test_checkpoint_units_round_trip_and_a_new_run_forgets_the_old_checkpoint(tmp_path):
    import torch

    out = tmp_path / "s.h5"
    ck = Checkpoints(out, False, 10)
    recs = [{"acc": np.array([0.1, 0.2]), "seen": np.array([0, 0])},
            {"acc": np.array([0.3, 0.4]), "seen": np.array([10, 10])}]
    ck.save_progress("final0", 10, {"W0": torch.arange(6.0).view(1, 2, 3)}, recs)
    ck.finish("grid0", {"acc": np.array([0.5, 0.6])})
    back = Checkpoints(out, True, 10)
    seen, tensors, got = back.progress("final0")
    assert seen == 10 and np.array_equal(tensors["W0"], np.arange(6.0).reshape(1, 2, 3))
    for x, y in zip(got, recs, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert np.array_equal(back.finished("grid0")["acc"], [0.5, 0.6])
    assert back.finished("final0") is None and back.progress("grid0") is None
    back.finish("final0", {"x": np.zeros(1)})  # a finished unit keeps no progress
    assert back.progress("final0") is None
    assert [ck.due(s, 30) for s in (10, 15, 20, 30)] == [True, False, True, False]
    Checkpoints(out, False, 10)  # --overwrite: the old checkpoint is gone
    assert not checkpoint_path(out).exists()


def test_a_checkpoint_of_another_run_is_refused_and_checkpoint_every_may_change(tmp_path):
    """--overwrite forgets the old run's checkpoint; one left beside a newer store (another
    run's) is refused on --resume instead of being read into it; run.checkpoint_every may
    differ on resume (it does not change the numbers, and reproduce ignores it)."""
    out = tmp_path / "s.h5"
    args = cli_args("rnn-memory", out)
    args[args.index("--samples") + 1] = "300"
    assert CliRunner().invoke(app, args).exit_code == 0
    foreign = Checkpoints(tmp_path / "other.h5", False, 10, "2020-01-01T00:00:00+00:00")
    foreign.finish("grid-h8", {"acc": np.zeros(1)})
    import h5py

    with h5py.File(out, "r+") as f:
        f.attrs["status"] = "failed: terminated; continue with --resume"
    checkpoint_path(tmp_path / "other.h5").rename(checkpoint_path(out))
    r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 2 and "belongs to another run" in r.output, r.output
    checkpoint_path(out).unlink()
    r = CliRunner().invoke(app, [*args, "--set", "run.checkpoint_every=37", "--resume"])
    assert r.exit_code == 0, r.output  # no checkpoint: starts again in the same store
    assert read_store(out).complete and not checkpoint_path(out).exists()
