"""Shared fixtures: the real data directory (CI has ../shared/data) and tiny IDX data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def data_dir() -> Path:
    """The real data: $PLAST_DATA or ../shared/data (CI has it; never skipped)."""
    return Path(os.environ.get("PLAST_DATA") or SHARED_DATA)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def real_data_dir() -> Path:
    d = data_dir()
    assert (d / "mnist").is_dir(), f"test data missing at {d}: set PLAST_DATA"
    return d


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Point PLAST_DATA at the real data and keep every test's outputs in tmp_path."""
    monkeypatch.setenv("PLAST_DATA", str(data_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
