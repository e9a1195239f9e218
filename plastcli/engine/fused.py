"""The fused inner loop: a group's whole episode (online steps, query loss, reverse pass)
in one call to a small C kernel (``fused.c``), instead of some 280 tensor operations per
online step (the reference path, :mod:`plastcli.engine.adjoint`).

The kernel is compiled on first use (about 3 s) with the system's C compiler (``$CC``,
else ``cc``, else ``gcc``) for this machine and element type, and cached
(:func:`cache_dir`) by a hash of its source, flags, compiler and CPU. Where it cannot be
built, or for a configuration it does not cover (a GPU tensor, plastic feedback, more than
16 layers), the reference path runs; a failed build says so once, in one line.
``PLAST_ENGINE=reference`` chooses the reference path everywhere.

The terms reach the kernel as data: each layer's :class:`plastcli.core.terms.LayerPlan`
is encoded as ``[groups, decay index, (a, b, sign, members, (index, scalar) ...) ...]``.
Shapes as in :func:`run_group`: x ``[P, T, n_0]``, coef ``[P, L, R]``, W_l ``[P, n_l, n_{l-1}]``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from plastcli import data_cache
from plastcli.core import terms
from plastcli.core.network import Net
from plastcli.core.terms import BUILTIN_POOL, Pool

SOURCE = Path(__file__).with_name("fused.c")
# -fno-trapping-math lets gcc turn the activations' choices into selects (no value changes).
# -ffp-contract=off: every multiply and add rounds on its own, so a value depends only on the
# source's order of operations, not on where gcc chose to fuse a multiply-add (it did so in
# one loop shape and not in another, so restructuring a loop changed bits); no slower here.
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=off", "-fPIC", "-shared", "-pthread"]
MAX_LAYERS, MAX_GROUPS, MAX_MEMBERS = 16, 32, 8  # fused.c's MAXL, MAXG, MAXM
MIN_REBUILD_FACTOR = 0.5  # as adjoint.MIN_REBUILD_FACTOR: below, a layer keeps copies
BUILD_TIMEOUT_S = 300

_A = {terms.E_POST: 0, terms.Y_POST: 1, terms.ONES: 2}
_B = {terms.Y_PRE: 0, terms.E_PRE: 1, terms.ONES: 2, terms.OJA_PRE: 3}
_S = {terms.S_ONE: 0, terms.S_SUM: 1, terms.S_YME: 2, terms.S_EMY: 3}
_CTYPE = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}

_libs: dict[torch.dtype, ctypes.CDLL | None] = {}
_failure: str | None = None
_noticed = False


def cache_dir() -> Path:
    """Where built kernels live: ``fused/`` inside ``$PLAST_CACHE``, else beside the decoded
    data sets (:func:`plastcli.data_cache.cache_dir`), ``${XDG_CACHE_HOME:-~/.cache}/plast``."""
    decoded = data_cache.cache_dir()
    return (decoded if os.environ.get(data_cache.CACHE_ENV) else decoded.parent) / "fused"


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (which may carry arguments, e.g. ``ccache gcc``), else
    cc, else gcc; None if there is none."""
    cc = shlex.split(os.environ.get("CC") or "") or ["cc"]
    if shutil.which(cc[0]):
        return cc
    gcc = shutil.which("gcc")
    return [gcc] if gcc else None


def build_id(dtype: torch.dtype = torch.float32) -> str | None:
    """The loaded kernel's file name (its hash names source, flags, compiler and CPU, which
    decide its float rounding), or None if none is loaded; stores record it."""
    lib = _libs.get(dtype)
    return Path(lib._name).name if lib is not None else None


def _build(real: str) -> Path:
    """Compile fused.c for ``real`` ('float' or 'double') unless cached; the library path."""
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler: install cc or gcc, or set CC")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                             timeout=BUILD_TIMEOUT_S).stdout
    defs = [f"-DREAL={real}"] + (["-DREAL_IS_FLOAT"] if real == "float" else [])
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS + defs), version,
                                    _cpu_id(), platform.machine()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"fused-{real}-{key}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    except OSError:  # a read-only cache: build for this process only, in a temporary folder
        out = Path(tempfile.mkdtemp(prefix="plast-fused-")) / out.name
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([*cc, *FLAGS, *defs, str(SOURCE), "-o", tmp, "-lm"],
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            why = f": {lines[0]}" if lines else ", no message"
            raise OSError(f"{Path(cc[0]).name} failed (exit {r.returncode}{why})")
        os.replace(tmp, out)  # atomic: processes building at once each see a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load(real: str) -> ctypes.CDLL:
    """The built kernel, loaded; a cached file that does not load (truncated, damaged) is
    removed and built again, once."""
    path = _build(real)
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return ctypes.CDLL(str(_build(real)))


def library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernel for ``dtype`` (built on first use), or None where it cannot be built."""
    global _failure
    if dtype not in _CTYPE:
        return None
    if dtype not in _libs:
        real, ct = _CTYPE[dtype]
        try:
            lib = _load(real)
        except (OSError, subprocess.SubprocessError) as err:
            _failure = (f"the C compiler took over {BUILD_TIMEOUT_S} s"
                        if isinstance(err, subprocess.TimeoutExpired)
                        else str(err).splitlines()[0] if str(err) else type(err).__name__)
            _libs[dtype] = None
            return None
        fn = lib.plast_fused_episode
        P = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int] * 5 + [P, P, ct, ct] + [ctypes.c_int] * 3 + [P] * 10
        fn.restype = ctypes.c_int
        _libs[dtype] = lib
    return _libs[dtype]


ENGINES = ("fused", "reference")


def enabled() -> bool:
    """``PLAST_ENGINE``: 'fused' (the default: the kernel wherever it applies) or
    'reference' (the tensor path everywhere); anything else is a one-line error."""
    from plastcli.errors import PlastError

    value = os.environ.get("PLAST_ENGINE", "fused").strip().lower() or "fused"
    if value not in ENGINES:
        raise PlastError(f"PLAST_ENGINE={os.environ['PLAST_ENGINE']!r} is not allowed; "
                         f"allowed: {', '.join(ENGINES)}")
    return value == "fused"


def failure() -> str | None:
    """Why the kernel could not be built (None: it was, or it was not tried)."""
    return _failure


def _notice() -> None:
    global _noticed
    if not _noticed and _failure is not None:
        _noticed = True
        print(f"plast: note: the fused kernel could not be built or loaded ({_failure}); "
              "running the reference path, about 5x slower", file=sys.stderr)


def ready(device: torch.device | str, feedback: str, n_layers: int,
          dtype: torch.dtype = torch.float32) -> bool:
    """Will the fused kernel run a meta-training on ``device``? Builds it on first use;
    a failed build is told once (one line) and the reference path runs."""
    x = torch.empty(0, dtype=dtype, device=device)
    if not applies(x, feedback, n_layers):
        return False
    if library(dtype) is None:
        _notice()
        return False
    return True


def encode_plans(active: list, pool: Pool) -> list[int] | None:
    """The layers' plans as the kernel's int list, or None beyond its limits."""
    out: list[int] = []
    for on in active:
        plan = terms.plan(pool, frozenset(on))
        groups = plan.groups
        if len(groups) > MAX_GROUPS or any(len(g.members) > MAX_MEMBERS for g in groups):
            return None
        out += [len(groups), -1 if plan.decay is None else plan.decay]
        for g in groups:
            out += [_A[g.a], _B[g.b], g.sign, len(g.members)]
            for r, s in g.members:
                out += [r, _S[s]]
    return out


def applies(x: torch.Tensor, feedback: str, n_layers: int) -> bool:
    """Can the fused kernel run this group (without building it)?"""
    return (enabled() and x.device.type == "cpu" and x.dtype in _CTYPE
            and feedback in ("fixed", "sym") and n_layers <= MAX_LAYERS)


def _check_inputs(net: Net, x, labels, xq, yq, coef, active, feedback: str) -> None:
    """What the kernel reads without bounds checks, checked here (a ValueError, as the
    reference path's indexing would raise)."""
    P, T, n0 = x.shape
    L, n_out = net.n_layers, net.W[-1].shape[1]
    mats = list(net.W) + (list(net.Bf) if feedback == "fixed" else [])
    problems = []
    if len(active) != L:
        problems.append(f"{len(active)} layer plans for {L} layers")
    elif any(r >= coef.shape[-1] or r < 0 for on in active for r in on):
        problems.append(f"a term index beyond the {coef.shape[-1]} coefficients")
    if tuple(coef.shape[:2]) != (P, L):
        problems.append(f"coefficients {tuple(coef.shape)} for P = {P}, L = {L}")
    prev = n0
    for w in net.W:
        if w.shape[0] != P or w.shape[2] != prev:
            problems.append(f"a weight matrix {tuple(w.shape)} after width {prev}, P = {P}")
        prev = w.shape[1]
    if any(b.shape != w.shape for b, w in zip(mats[L:], net.W, strict=False)):
        problems.append("feedback matrices shaped unlike the weights")
    if tuple(labels.shape) != (P, T) or xq.shape[0] != P or xq.shape[2] != n0 \
            or tuple(yq.shape) != tuple(xq.shape[:2]):
        problems.append("inputs and labels of unlike shapes")
    for lab in (labels, yq):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= n_out):
            problems.append(f"a label outside [0, {n_out})")
    if problems:
        raise ValueError("fused inner step: " + "; ".join(dict.fromkeys(problems)))


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _ptrs(ts: list[torch.Tensor]):
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def run_group(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
              threads: int = 1, pool: Pool = BUILTIN_POOL):
    """(query CE ``[P]``, final Net, dCE/dcoef ``[P, L, R]``) from the kernel, as
    :func:`plastcli.engine.adjoint.run_group` gives them; None where it cannot run
    (the caller then runs the reference path)."""
    if not applies(x, feedback, net.n_layers) or x.shape[1] < 1 or xq.shape[1] < 1:
        return None
    _check_inputs(net, x, labels, xq, yq, coef, active, feedback)
    plan = encode_plans(active, pool)
    lib = library(x.dtype)
    if plan is None or lib is None:
        _notice()
        return None
    P, T, n0 = x.shape
    L = net.n_layers
    dt = x.dtype
    dims = [n0] + [w.shape[1] for w in net.W]
    W = [w.detach().to(dt).contiguous().clone() for w in net.W]
    W_final = [torch.empty_like(w) for w in W]
    B = [b.detach().to(dt).contiguous() for b in net.Bf] if feedback == "fixed" else []
    x_c, xq_c = x.detach().contiguous(), xq.detach().to(dt).contiguous()
    lab = labels.to(torch.int64).contiguous()
    lab_q = yq.to(torch.int64).contiguous()
    coef_c = coef.detach().to(dt).contiguous()
    ce = torch.empty(P, dtype=dt)
    grad = torch.zeros(P, L, coef.shape[-1], dtype=dt)
    c_dims = (ctypes.c_int * len(dims))(*dims)
    c_plan = (ctypes.c_int * len(plan))(*plan)
    need_e0 = int(terms.plan(pool, frozenset(active[0])).reads_pre_error)
    _, ct = _CTYPE[dt]
    status = lib.plast_fused_episode(
        P, L, T, xq.shape[1], coef.shape[-1], c_dims, c_plan, ct(beta),
        ct(MIN_REBUILD_FACTOR), need_e0, int(feedback == "sym"), max(1, int(threads)),
        _ptrs(W), _ptrs(W_final), _ptrs(B) if B else None, _ptr(x_c), _ptr(lab),
        _ptr(xq_c), _ptr(lab_q), _ptr(coef_c), _ptr(ce), _ptr(grad))
    if status == 1:
        from plastcli.errors import PlastError

        raise PlastError(f"the fused kernel could not allocate its tape ({T} steps of a "
                         f"{'-'.join(map(str, dims))} network per member); use fewer online "
                         "steps or PLAST_ENGINE=reference")
    if status:
        return None
    return ce, Net(W=W_final, Bf=net.Bf, D=net.D), grad
