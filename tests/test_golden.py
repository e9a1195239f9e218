"""Golden runs: a tiny recipe's first episodes, pinned to small committed stores.

The fast gradient is checked against autograd within one commit (test_adjoint.py); this
test catches drift across commits. Regenerate the stores only on purpose, with
``python tools/make_golden.py``, and say why in CHANGELOG.md.

Tolerance: another CPU rounds differently (SIMD width, BLAS kernels), so bits are not
promised. Float32 rounding moves theta by ~1e-9 per episode; a real change (a term's
gradient, the meta learning rate by 1%, as tested below) moves it by ~1e-5.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import REPO

from plastcli.results.store import read_store

spec = importlib.util.spec_from_file_location("make_golden", REPO / "tools/make_golden.py")
make_golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_golden)

# metric -> (rtol, atol): float32 rounding across CPUs, far below a real change
TOLERANCE = {"theta": (1e-4, 1e-7), "meta_loss": (1e-4, 1e-6), "query_ce": (1e-4, 1e-6),
             "angles": (1e-3, 1e-3), "orthonormality_error": (1e-3, 1e-6),
             # one query image in 50 may flip on another CPU
             "meta_accuracy": (0.0, 1 / 50 + 1e-6)}


def differences(golden, new) -> list[str]:
    """Every ``/episodes`` metric (but wall time) of ``new`` that is not within
    TOLERANCE of ``golden``; a metric missing from either side counts too."""
    names = {k.removeprefix("episodes/") for st in (golden, new) for k in st.arrays
             if k.startswith("episodes/")} - {"seconds"}
    out = []
    for name in sorted(names):
        key = f"episodes/{name}"
        if key not in golden.arrays or key not in new.arrays or name not in TOLERANCE:
            out.append(f"{name}: missing or without a tolerance")
            continue
        a, b = np.asarray(golden[key]), np.asarray(new[key])
        rtol, atol = TOLERANCE[name]
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            worst = np.nanmax(np.abs(a - b)) if a.shape == b.shape else float("nan")
            out.append(f"{name}: max |diff| {worst:.3g}")
    return out


@pytest.mark.parametrize("name", sorted(make_golden.CASES))
def test_first_episodes_match_the_golden_store(name, tmp_path):
    golden = read_store(REPO / "tests/golden" / f"{name}.h5")
    new = read_store(make_golden.make(name, tmp_path / f"{name}.h5"))
    assert golden.attrs["status"] == new.attrs["status"] == "complete"
    assert differences(golden, new) == [], (
        f"{name} drifted from tests/golden/{name}.h5 (made at {golden.attrs['git_commit']} "
        f"on {golden.attrs.get('cpu_model')}); if the change is meant, rerun "
        f"tools/make_golden.py")


def test_the_tolerance_sees_a_one_percent_change(tmp_path, monkeypatch):
    """The comparison is tight enough to fail for a real change: the pool run with its
    meta learning rate raised by 1%."""
    recipe, sets = make_golden.CASES["pool-tiny"]
    monkeypatch.setitem(make_golden.CASES, "pool-tiny", (recipe, [*sets, "meta.lr=1.01e-3"]))
    golden = read_store(REPO / "tests/golden/pool-tiny.h5")
    new = read_store(make_golden.make("pool-tiny", tmp_path / "pool-tiny.h5"))
    assert any(d.startswith("theta") for d in differences(golden, new))
