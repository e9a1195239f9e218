"""Checkpoints of the online experiments (``baseline``, ``init-study``, ``rnn-memory``), so
that ``--resume`` continues a killed run to the numbers an uninterrupted run gives.

An online experiment is a fixed sequence of *units*: one stage (grid search or final runs)
of one population (a group of members, or one hidden size), each trained on its streams
from sample 0 to S. The checkpoint is a file beside the store, ``<store>.resume.npz``
[choice: not a group inside the store, whose every write copies the whole file, so that
saving 20 members' weights does not copy and grow the store each time], written to a
temporary file, fsynced and moved over the old one, so a kill leaves the previous whole
checkpoint. It holds flat numpy arrays keyed ``<unit>:<part>:<name>``:

- ``<unit>:done:<name>``: a finished unit's outputs (held-out accuracies, evaluation
  records, end-of-run analyses), read back on resume instead of training the unit again;
  the grid-stage result is derived from them, so it is never recomputed differently;
- ``<unit>:at``: how many samples the unit in progress has seen, with its network tensors
  ``<unit>:net:<name>`` and its evaluation records so far ``<unit>:rec:<name>``
  ``[n_evals, P, ...]``. The stream position is that count: a member's stream is a pure
  function of its seed (:func:`plastcli.engine.online.stream_order`).

A unit in progress is saved every ``run.checkpoint_every`` samples and when it finishes.
The file is removed when the run completes (the store then holds everything, and the
lock is still held), and kept when it fails, for ``--resume``. It carries the store's
``created`` time, so a checkpoint is never read into another run's store.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from plastcli.errors import PlastError

SEP = ":"
STAMP = "run:created"  # the store's 'created' time: a checkpoint is read only by its own run


def stack_records(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Evaluation records (one dict of ``[P, ...]`` per evaluation) as ``[n, P, ...]``."""
    return {k: np.stack([r[k] for r in records]) for k in records[0]} if records else {}


def unstack_records(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`stack_records`."""
    if not arrays:
        return []
    n = len(next(iter(arrays.values())))
    return [{k: v[i] for k, v in arrays.items()} for i in range(n)]


def checkpoint_path(store: Path) -> Path:
    return Path(store).with_name(Path(store).name + ".resume.npz")


class Checkpoints:
    """The units of one run: what is finished, where the unit in progress stands.

    ``resumed``: read the checkpoint beside ``store`` (none yet: start from the beginning);
    otherwise any old checkpoint there is removed (a run started again with --overwrite).
    """

    def __init__(self, store: Path, resumed: bool, every: int, stamp: str = ""):
        self.path, self.every, self.stamp = checkpoint_path(store), every, stamp
        self.state: dict[str, np.ndarray] = {}
        if resumed and self.path.exists():
            try:
                with np.load(self.path) as z:
                    self.state = {k: z[k] for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise PlastError(f"--resume: the checkpoint {self.path} cannot be read "
                                 f"({exc}); start again with --overwrite") from None
            if str(self.state.pop(STAMP, "")) != stamp:
                raise PlastError(f"--resume: the checkpoint {self.path} belongs to another "
                                 f"run than {store}; start again with --overwrite")
        elif not resumed:
            self.remove()

    def remove(self) -> None:
        """Forget the checkpoint (the run is complete, or starts again)."""
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.state, **{STAMP: np.array(self.stamp)})
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _part(self, unit: str, part: str) -> dict[str, np.ndarray]:
        prefix = f"{unit}{SEP}{part}{SEP}"
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    def finished(self, unit: str) -> dict[str, np.ndarray] | None:
        """A finished unit's outputs, or None if it has not finished."""
        if f"{unit}{SEP}finished" not in self.state:
            return None
        return self._part(unit, "done")

    def progress(self, unit: str) -> tuple[int, dict[str, np.ndarray],
                                          list[dict[str, np.ndarray]]] | None:
        """(samples seen, network tensors, evaluation records) of a unit in progress."""
        at = self.state.get(f"{unit}{SEP}at")
        if at is None:
            return None
        return int(at), self._part(unit, "net"), unstack_records(self._part(unit, "rec"))

    def _drop(self, unit: str) -> None:
        for k in [k for k in self.state if k.startswith(f"{unit}{SEP}")]:
            del self.state[k]

    def save_progress(self, unit: str, seen: int, tensors: dict[str, torch.Tensor],
                      records: list[dict[str, np.ndarray]]) -> None:
        self._drop(unit)
        self.state[f"{unit}{SEP}at"] = np.array(seen)
        for k, t in tensors.items():
            self.state[f"{unit}{SEP}net{SEP}{k}"] = t.detach().cpu().numpy()
        for k, v in stack_records(records).items():
            self.state[f"{unit}{SEP}rec{SEP}{k}"] = v
        self._write()

    def finish(self, unit: str, outputs: dict[str, np.ndarray]) -> None:
        self._drop(unit)
        self.state[f"{unit}{SEP}finished"] = np.array(True)
        for k, v in outputs.items():
            self.state[f"{unit}{SEP}done{SEP}{k}"] = np.asarray(v)
        self._write()

    def due(self, seen: int, total: int) -> bool:
        """Whether a unit that has just seen ``seen`` of ``total`` samples is saved now."""
        return seen < total and seen % self.every == 0


def net_tensors(net) -> dict[str, torch.Tensor]:
    """A feed-forward ``Net``'s tensors by name (``W0``, ``Bf0``, ``D0``, ...)."""
    out = {}
    for field in ("W", "Bf", "D"):
        for i, t in enumerate(getattr(net, field) or []):
            out[f"{field}{i}"] = t
    return out


def load_net(net, tensors: dict[str, np.ndarray]):
    """``net`` with its tensors replaced by the saved ones (same device and dtype)."""
    for field in ("W", "Bf", "D"):
        parts = getattr(net, field)
        if parts:
            setattr(net, field, [torch.as_tensor(tensors[f"{field}{i}"]).to(p)
                                 for i, p in enumerate(parts)])
    return net
