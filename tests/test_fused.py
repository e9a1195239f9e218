"""The fused kernel (plastcli/engine/fused.py, fused.c) against the reference path.

tests/test_adjoint.py checks both engines against autograd for every term of the grammar;
here the two engines against each other (float64, every term, both feedbacks, the final
weights too), the thread split, a member that blows up, and the fallback where the kernel
cannot be built.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from term_cases import RECIPE_POOL
from test_engine import _adjoint_args, _assert_same_meta_outputs, _config, _tiny_sampler

from plastcli.core.network import init_net
from plastcli.core.rules import LayerCoefficients
from plastcli.core.terms import BUILTIN_POOL, TERM_NAMES
from plastcli.engine import cores, fused, parallel, workers
from plastcli.engine.meta import MetaTrainer
from plastcli.errors import PlastError


def _float64_args(terms, feedback, seeds=(3, 4, 5), pool=BUILTIN_POOL, scale=0.05):
    """meta_loss_and_coef_grad's arguments in float64 with random coefficients."""
    sampler = _tiny_sampler()
    cfg = _config(terms, feedback, P=len(seeds), pool=pool)
    tr = MetaTrainer(cfg, sampler, list(seeds), torch.device("cpu"))
    ep = sampler.sample(list(seeds), 0, "cpu")
    g = torch.Generator().manual_seed(11)
    theta = scale * torch.rand(tr.params[0].shape, generator=g, dtype=torch.float64)
    full = theta @ tr.S.double()
    coef = full.unsqueeze(1) * tr.mask.double()
    active = LayerCoefficients.build(full, tr.mask, pool).active
    net = init_net(cfg.layers, list(seeds), 0, cfg.init, feedback)
    net.W = [w.double() for w in net.W]
    net.Bf = [b.double() for b in net.Bf] if net.Bf else None
    return (net, ep.x_train.double(), ep.y_train, ep.x_query.double(), ep.y_query, coef,
            active, 10.0, feedback)


def _both(args, pool=BUILTIN_POOL, **kw):
    return [parallel.meta_loss_and_coef_grad(*args, pool=pool, engine=e, **kw)
            for e in ("fused", "reference")]


@pytest.mark.parametrize("feedback", ["fixed", "sym"])
@pytest.mark.parametrize("pool", [BUILTIN_POOL, RECIPE_POOL], ids=["builtin", "declared"])
def test_fused_gives_the_reference_numbers_in_float64(feedback, pool):
    """Every term of the pool at once (decay, the quadratic scalars, Oja, ones, declared
    terms): CE, coefficient gradient and final weights agree to float64 rounding."""
    args = _float64_args(pool.names, feedback, pool=pool, scale=0.01)
    (ce_f, net_f, g_f), (ce_r, net_r, g_r) = _both(args, pool)
    assert torch.isfinite(ce_f).all() and g_r.abs().max() > 1e-4
    torch.testing.assert_close(ce_f, ce_r, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_f, g_r, rtol=1e-9, atol=1e-11)
    for a, b in zip(net_f.W, net_r.W, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert net_f.W[0].dtype == torch.float64


@pytest.mark.parametrize("term", TERM_NAMES)
def test_fused_per_layer_masks_match_the_reference(term):
    """A term on the middle layer only, pseudo_grad everywhere (the plans differ by layer)."""
    from plastcli.core.rules import layer_mask

    terms = ["pseudo_grad"] if term == "pseudo_grad" else ["pseudo_grad", term]
    args = list(_float64_args(terms, "fixed"))
    mask = layer_mask(terms, [["pseudo_grad"], terms, ["pseudo_grad"]], 3).double()
    coef = args[5] * mask
    args[5] = coef
    args[6] = LayerCoefficients.build(coef[:, 0], mask.expand(coef.shape[0], 3, -1)).active
    (_, _, g_f), (_, _, g_r) = _both(args)
    torch.testing.assert_close(g_f, g_r, rtol=1e-9, atol=1e-11)
    assert g_f[:, [0, 2]].abs().sum() > 0


def test_fused_float32_agrees_with_the_reference_path():
    (ce_f, net_f, g_f), (ce_r, net_r, g_r) = _both(_adjoint_args([3, 4, 5]))
    assert g_f.dtype == torch.float32
    _assert_same_meta_outputs((ce_f, net_f, g_f), (ce_r, net_r, g_r))


def test_thread_count_does_not_change_a_members_numbers():
    args = _adjoint_args([3, 4, 5, 6, 7])
    one = parallel.meta_loss_and_coef_grad(*args, engine="fused", threads=1)
    three = parallel.meta_loss_and_coef_grad(*args, engine="fused", threads=3)
    alone = parallel.meta_loss_and_coef_grad(*_adjoint_args([4]), engine="fused")
    assert torch.equal(one[0], three[0]) and torch.equal(one[2], three[2])
    for a, b in zip(one[1].W, three[1].W, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(alone[2][0], one[2][1])  # member 4 alone: the same bits


def test_a_member_that_blows_up_gets_a_zero_gradient_and_spares_the_others():
    args = list(_adjoint_args([3, 4]))
    args[0].W[0][1, 0, 0] = float("inf")  # member 1's activations overflow
    ce, _, grad = parallel.meta_loss_and_coef_grad(*args, engine="fused")
    ref = parallel.meta_loss_and_coef_grad(*_adjoint_args([3]), engine="fused")
    assert not torch.isfinite(ce[1]) and torch.equal(grad[1], torch.zeros_like(grad[1]))
    assert torch.equal(ce[:1], ref[0]) and torch.equal(grad[:1], ref[2])


def _fresh_build(monkeypatch, tmp_path, cc_script: str | None) -> None:
    """An empty kernel cache, no kernel loaded yet, and ``$CC`` a shell script with this
    body (None: a compiler that does not exist)."""
    cc = tmp_path / ("cc" if cc_script is not None else "no-such-cc")
    if cc_script is not None:
        cc.write_text("#!/bin/sh\n" + cc_script)
        cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("PLAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fused, "_libs", {})
    monkeypatch.setattr(fused, "_failure", None)
    monkeypatch.setattr(fused, "_noticed", False)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine without a C compiler and an empty kernel cache."""
    _fresh_build(monkeypatch, tmp_path, None)
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)


def test_without_a_compiler_the_reference_path_runs_with_one_notice(no_compiler, capsys):
    args = _adjoint_args([3, 4])
    got = parallel.meta_loss_and_coef_grad(*args)
    again = parallel.meta_loss_and_coef_grad(*args)
    ref = parallel.meta_loss_and_coef_grad(*args, engine="reference")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fused kernel could not be built" in err
    assert "no C compiler" in err and "reference path" in err
    _assert_same_meta_outputs(got, ref)
    _assert_same_meta_outputs(again, ref)
    tr = MetaTrainer(_config(["pseudo_grad"], P=2), _tiny_sampler(), [3, 4],
                     torch.device("cpu"))
    assert tr.engine == "reference"


def test_a_failing_build_is_reported_and_not_cached(tmp_path, monkeypatch, capsys):
    _fresh_build(monkeypatch, tmp_path, "echo 'cc: error: unsupported option' >&2\nexit 1\n")
    assert not fused.ready("cpu", "fixed", 3)
    assert "cc failed (exit 1: cc: error: unsupported option)" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("*.so"))  # no half-written library


def test_the_engine_choice_is_honoured(monkeypatch):
    cfg = _config(["pseudo_grad", "err_hebb", "oja"], P=2)
    assert MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu")).engine == "fused"
    monkeypatch.setenv("PLAST_ENGINE", "reference")
    assert MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu")).engine == "reference"
    monkeypatch.setenv("PLAST_ENGINE", "fast")
    with pytest.raises(PlastError, match="PLAST_ENGINE='fast' is not allowed; allowed: fused, "
                                         "reference"):
        MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu"))
    monkeypatch.delenv("PLAST_ENGINE")
    cfg.gradient = "autograd"
    assert MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu")).engine == "autograd"
    assert not fused.applies(torch.empty(0, device="meta"), "fixed", 3)  # not the CPU
    assert not fused.applies(torch.empty(0), "plastic", 3)


def test_threads_come_from_free_cores(monkeypatch):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    # a /proc/stat probe: cpu 1 busy all the time, cpu 2 for 30% of it, the rest idle
    samples = iter([{0: (0, 100), 1: (0, 100), 2: (0, 100), 3: (0, 100)},
                    {0: (0, 110), 1: (10, 110), 2: (3, 110), 3: (0, 110)}])
    monkeypatch.setattr(cores, "_cpu_times", lambda cpus: next(samples))
    monkeypatch.setattr(cores, "_own_cpu_s", lambda: 0.0)
    assert cores.free_cores(probe_s=0) == 3  # 1.3 cores busy
    monkeypatch.setattr(cores, "_cpu_times", lambda cpus: None)  # no /proc: load average
    monkeypatch.setattr(cores.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert cores.free_cores() == 3
    monkeypatch.setattr(cores.os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert cores.free_cores() == 1  # never fewer than one
    monkeypatch.setattr(cores, "free_cores_recent", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # OMP_NUM_THREADS=2
    assert workers.threads_for(16, "cpu") == 2
    assert workers.threads_for(1, "cpu") == 1
    assert workers.threads_for(16, "meta") == 1
    monkeypatch.setattr(cores, "free_cores_recent", lambda: 1)  # another job holds a core
    assert workers.threads_for(16, "cpu") == 1


def test_our_own_cpu_time_does_not_count_as_busy(monkeypatch):
    """The background probe overlaps our own import of torch: a core busy with it is ours."""
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    samples = iter([{0: (0, 100), 1: (0, 100)}, {0: (10, 110), 1: (0, 110)}])  # cpu 0 busy
    own = iter([5.0, 5.0 + 0.1])  # ... with us, for the whole 0.1 s probe
    clock = iter([0.0, 0.1])
    monkeypatch.setattr(cores, "_cpu_times", lambda cpus: next(samples))
    monkeypatch.setattr(cores, "_own_cpu_s", lambda: next(own))
    monkeypatch.setattr(cores, "_wall", lambda: next(clock))
    monkeypatch.setattr(cores, "_sleep", lambda s: None)
    assert cores.free_cores(probe_s=0.1) == 2


def test_a_background_probe_serves_the_next_request(monkeypatch):
    calls = []
    monkeypatch.setattr(cores, "_recent", None)
    monkeypatch.setattr(cores, "_probe", None)
    monkeypatch.setattr(cores, "free_cores", lambda probe_s: calls.append(probe_s) or 7)
    cores.start_probe()
    cores.start_probe()  # one probe at a time
    assert cores.free_cores_recent() == 7
    assert cores.free_cores_recent() == 7  # remembered
    assert calls == [cores.BACKGROUND_PROBE_S]


def test_the_probe_reads_this_machines_cpus():
    times = cores._cpu_times({0})
    if times is None:
        pytest.skip("no /proc/stat here")
    busy, total = times[0]
    assert 0 <= busy <= total
    assert 1 <= cores.free_cores(probe_s=0.01) <= len(cores.os.sched_getaffinity(0))


@pytest.mark.parametrize("layers", [[12, 4], [12, 6, 4], [12, 9, 7, 6, 5, 4]],
                         ids=["one-layer", "two-layer", "five-layer"])
@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_fused_matches_the_reference_at_any_depth(layers, feedback):
    """Depths the tiny task does not cover (one layer: the output layer is also the first;
    five: the paper's depth), the whole pool, random data, in float64."""
    P, T, Q, L = 2, 7, 5, len(layers) - 1
    g = torch.Generator().manual_seed(3)
    net = init_net(layers, [1, 2], 0, "xavier", feedback)
    net.W = [w.double() for w in net.W]
    net.Bf = [b.double() for b in net.Bf] if net.Bf else None
    x = torch.rand(P, T, layers[0], generator=g, dtype=torch.float64)
    xq = torch.rand(P, Q, layers[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, layers[-1], (P, T), generator=g)
    yq = torch.randint(0, layers[-1], (P, Q), generator=g)
    coef = 0.02 * torch.rand(P, L, len(TERM_NAMES), generator=g, dtype=torch.float64)
    active = [tuple(range(len(TERM_NAMES)))] * L
    args = (net, x, y, xq, yq, coef, active, 10.0, feedback)
    (ce_f, net_f, g_f), (ce_r, net_r, g_r) = _both(args)
    assert g_r.abs().max() > 1e-4
    torch.testing.assert_close(ce_f, ce_r, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_f, g_r, rtol=1e-9, atol=1e-11)
    for a, b in zip(net_f.W, net_r.W, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_inputs_the_kernel_would_read_out_of_bounds_are_refused():
    """The kernel trusts its arguments; run_group checks what it would read unchecked."""
    args = list(_adjoint_args([3, 4]))
    bad_label = list(args)
    bad_label[4] = args[4].clone()
    bad_label[4][0, 0] = 99  # a query label beyond the outputs
    with pytest.raises(ValueError, match="label outside"):
        parallel.meta_loss_and_coef_grad(*bad_label, engine="fused")
    short_plan = list(args)
    short_plan[6] = args[6][:-1]  # a plan for one layer too few
    with pytest.raises(ValueError, match="layer plans"):
        parallel.meta_loss_and_coef_grad(*short_plan, engine="fused")
    few_coefs = list(args)
    few_coefs[5] = args[5][..., :2]  # err_hebb and oja have indices 2 and 9
    with pytest.raises(ValueError, match="term index beyond"):
        parallel.meta_loss_and_coef_grad(*few_coefs, engine="fused")


def test_an_episode_without_steps_goes_to_the_reference_path():
    args = list(_adjoint_args([3]))
    args[1], args[2] = args[1][:, :0], args[2][:, :0]  # T = 0
    got = parallel.meta_loss_and_coef_grad(*args, engine="fused")
    ref = parallel.meta_loss_and_coef_grad(*args, engine="reference")
    _assert_same_meta_outputs(got, ref)


@pytest.mark.parametrize("engine", ["fused", "reference"])
def test_a_store_says_which_engine_ran_it(engine, tmp_path, monkeypatch):
    from conftest import REPO
    from rich.console import Console

    from plastcli.experiments import meta_train
    from plastcli.recipes import load_recipe
    from plastcli.results.store import read_store
    from plastcli.results.summary import store_summary

    monkeypatch.setenv("PLAST_ENGINE", engine)
    monkeypatch.setattr(cores, "free_cores_recent", lambda: 1)
    recipe = load_recipe(REPO / "recipes/bio.yaml", [
        "network.layers=[784,16,47]", "task.classes=3", "task.train_per_class=2",
        "task.query_per_class=2", "population.seeds=2", "meta.episodes=1", "run.device=cpu"])
    meta_train.run(recipe, tmp_path / "s.h5")
    a = read_store(tmp_path / "s.h5").attrs
    assert str(a["engine"]) == engine and int(a["engine_threads"]) == 1
    assert str(a["engine_build"]).startswith("fused-float-") == (engine == "fused")
    assert int(a["processes"]) == 1
    console = Console(width=100, record=True)
    for part in store_summary(tmp_path / "s.h5"):
        console.print(part)
    shown = console.export_text()
    assert f"engine            {engine}, 1 " in shown


def test_a_tape_the_kernel_cannot_allocate_is_one_line(monkeypatch):
    class OutOfMemory:  # the kernel's status 1: malloc failed
        @staticmethod
        def plast_fused_episode(*args):
            return 1

    monkeypatch.setattr(fused, "library", lambda dtype: OutOfMemory)
    with pytest.raises(PlastError, match="could not allocate its tape .* use fewer online "
                                         "steps or PLAST_ENGINE=reference"):
        parallel.meta_loss_and_coef_grad(*_adjoint_args([3]), engine="fused")


def test_a_compiler_that_hangs_is_given_up_on(tmp_path, monkeypatch, capsys):
    _fresh_build(monkeypatch, tmp_path, "sleep 30\n")
    monkeypatch.setattr(fused, "BUILD_TIMEOUT_S", 0.5)
    assert not fused.ready("cpu", "fixed", 3)
    assert "the C compiler took over 0.5 s" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_blocked_sums_give_the_bits_of_one_row_at_a_time(dtype):
    """dot_rows (four rows per pass) against dot row by row, and axpy_rows against one axpy
    per row: the same operations in the same order, so equal to the bit, for every row
    length's tail and row count's remainder. This holds because the kernel is built without
    multiply-add contraction (-ffp-contract=off): with it, gcc fused the multiply and add in
    one loop shape and not in the other, and about half of these sums differed in the last
    bit."""
    lib = fused.library(dtype)
    if lib is None:
        pytest.skip(f"no fused kernel here: {fused.failure()}")
    g = torch.Generator().manual_seed(3)
    ptr = ctypes.c_void_p
    for r, m in ((1, 5), (8, 3), (4, 8), (6, 47), (9, 70), (13, 170), (5, 784)):
        A = torch.randn(r, m, generator=g, dtype=torch.float64).to(dtype)
        v = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)
        rows, one = torch.empty(r, dtype=dtype), torch.empty(r, dtype=dtype)
        start = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)
        acc_rows, acc_one = start.clone(), start.clone()
        lib.plast_sums(ptr(A.data_ptr()), ptr(v.data_ptr()), ctypes.c_int(r), ctypes.c_int(m),
                       *(ptr(t.data_ptr()) for t in (rows, one, acc_rows, acc_one)))
        assert torch.equal(rows, one), (r, m)
        assert torch.equal(acc_rows, acc_one), (r, m)
        # and they are the sums they claim to be
        torch.testing.assert_close(rows.double(), A.double() @ v.double(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acc_rows.double(), start.double() + rows.double() @ A.double(),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_softplus_and_slope_match_float64(dtype):
    """The kernel's activation (float: its own vectorised exp and log1p; float64: libm)
    against float64 softplus_beta (threshold 20) and sigmoid(beta z), both from beta z as
    the kernel rounds it: within 4 ulp of the element type, or within twice float's smallest
    normal (2^-126), below which the float kernel flushes exp to 0. Every branch: beta z
    from -120 to 120, the threshold at 20, and u = 1 + exp(beta z) rounding to 1."""
    lib = fused.library(dtype)
    if lib is None:
        pytest.skip(f"no fused kernel here: {fused.failure()}")
    z64 = torch.cat([torch.linspace(-12, 12, 200_001, dtype=torch.float64),
                     torch.tensor([0.0, 2.0, 2.0 - 1e-7, 2.0 + 1e-7, -1.6, -1.7, -8.7, -8.8])])
    for beta in (1.0, 10.0):
        z = z64.to(dtype)
        y, d = torch.empty_like(z), torch.empty_like(z)
        ct = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
        lib.plast_activate(ctypes.c_void_p(z.data_ptr()), ct(beta), ctypes.c_void_p(y.data_ptr()),
                           ctypes.c_void_p(d.data_ptr()), ctypes.c_int(z.numel()))
        zd = z.double()
        bz = (beta * z).double()  # beta z as the kernel rounds it, before exp
        want_y = torch.where(bz > 20, zd, torch.log1p(torch.exp(bz)) / beta)
        want_d = torch.sigmoid(bz)
        tiny = 2.0 ** -125 if dtype == torch.float32 else 0.0
        ulp = torch.finfo(dtype).eps
        for got, want, what in ((y, want_y, "softplus"), (d, want_d, "slope")):
            err = (got.double() - want).abs()
            bad = err > 4 * ulp * want.abs() + tiny
            assert not bad.any(), (f"{what}, beta {beta}: {int(bad.sum())} values off, e.g. z = "
                                   f"{zd[bad][:3].tolist()}: {got[bad][:3].tolist()} against "
                                   f"{want[bad][:3].tolist()}")


def test_a_damaged_cached_kernel_is_built_again_and_a_read_only_cache_builds_elsewhere(
        monkeypatch, tmp_path):
    monkeypatch.setenv("PLAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fused, "_libs", {})
    monkeypatch.setattr(fused, "_failure", None)
    so = fused._build("double")  # built, not loaded (a loaded file must not be rewritten)
    so.write_bytes(b"not an ELF file")  # truncated, or damaged on disk
    assert fused.library(torch.float64) is not None and fused.failure() is None
    assert so.read_bytes()[:4] == b"\x7fELF"  # built again in place
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder's parent should be")
    monkeypatch.setattr(fused, "cache_dir", lambda: blocked / "fused")  # cannot be made
    monkeypatch.setattr(fused, "_libs", {})
    lib = fused.library(torch.float64)
    assert lib is not None and fused.failure() is None and "plast-fused-" in lib._name
