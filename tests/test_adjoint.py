"""The hand-written reverse pass against autograd through the unrolled loop."""

from __future__ import annotations

import pytest
import torch
from term_cases import DECLARED, IDS, RECIPE_POOL, RECIPE_TERMS
from test_engine import _adjoint_args, _assert_same_meta_outputs, _config, _tiny_sampler

from plastcli.core.network import init_net
from plastcli.core.rules import LayerCoefficients, layer_mask
from plastcli.core.terms import BUILTIN_POOL, TERM_NAMES
from plastcli.engine import adjoint, fused, input_layer, parallel
from plastcli.engine.meta import MetaTrainer

SMALL = {"quad_1", "quad_2", "quad_3", "sum_post_grad"}  # large values blow the net up


def _both_gradients(terms, feedback, per_layer=None, seeds=(7, 8), chunk=1, pool=BUILTIN_POOL,
                    engine="reference"):
    """(autograd grad, adjoint grad, autograd CE, adjoint CE) in float64; ``engine``: the
    hand-written reverse pass on tensors ('reference') or the fused kernel ('fused')."""
    torch.set_default_dtype(torch.float64)
    min_defer = adjoint.MIN_DEFER_SIZE
    adjoint.MIN_DEFER_SIZE = 0  # the tiny layers defer too when chunk > 1
    try:
        sampler = _tiny_sampler()
        cfg = _config(terms, feedback, P=len(seeds), pool=pool)
        if per_layer is not None:
            cfg.mask = layer_mask(terms, per_layer, 3, pool).expand(len(seeds), 3, -1).clone()
        tr = MetaTrainer(cfg, sampler, list(seeds), torch.device("cpu"))
        ep = sampler.sample(list(seeds), 0, "cpu")
        ep.x_train, ep.x_query = ep.x_train.double(), ep.x_query.double()
        g = torch.Generator().manual_seed(5)
        scale = torch.tensor([0.03 if t in SMALL or pool.decl(t).s != "1" else 0.3
                              for t in terms])
        theta = (scale * torch.rand(tr.params[0].shape, generator=g)).requires_grad_(True)
        _, ce_ref, _ = tr.member_losses(ep, [theta])
        ref = torch.autograd.grad(ce_ref.sum(), theta)[0]
        full = theta @ tr.S.double()
        coef = full.unsqueeze(1) * tr.mask.double()
        net = init_net(cfg.layers, tr.seeds, 0, cfg.init, cfg.feedback)
        net.W = [w.double() for w in net.W]
        net.Bf = [b.double() for b in net.Bf] if net.Bf else None
        active = LayerCoefficients.build(full.detach(), tr.mask, pool).active
        ce, _, cg = parallel.meta_loss_and_coef_grad(net, ep.x_train, ep.y_train, ep.x_query,
                                                    ep.y_query, coef.detach(), active, 10.0,
                                                    feedback, chunk=chunk, pool=pool,
                                                    engine=engine)
        got = torch.autograd.grad(coef, theta, cg)[0]
        return ref, got, ce_ref.detach(), ce
    finally:
        torch.set_default_dtype(torch.float32)
        adjoint.MIN_DEFER_SIZE = min_defer


# Both engines: on the reference path chunk 1 applies every update at once and 5 defers
# them (12 steps: two full chunks and a partial one), exercising the low-rank products and
# the chunked reads of G; the fused kernel has no chunks.
PATHS = [("reference", 1), ("reference", 5), ("fused", 1)]
PATH_IDS = ["reference-chunk1", "reference-chunk5", "fused"]


@pytest.mark.parametrize(("engine", "chunk"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("term", TERM_NAMES)
def test_each_term_alone_matches_autograd(term, engine, chunk):
    terms = ["pseudo_grad"] if term == "pseudo_grad" else ["pseudo_grad", term]
    ref, got, ce_ref, ce = _both_gradients(terms, "fixed", chunk=chunk, engine=engine)
    torch.testing.assert_close(ce, ce_ref, rtol=1e-12, atol=1e-12)
    assert ref.abs().max() > 1e-3  # a gradient worth comparing
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("engine", "chunk"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_whole_pool_matches_autograd(feedback, engine, chunk):
    ref, got, _, _ = _both_gradients(list(TERM_NAMES), feedback, chunk=chunk, engine=engine)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_pool_without_decay_defers_updates_and_matches_autograd(feedback):
    """Decay forces a layer to apply updates at once; without it every term is deferred."""
    terms = [t for t in TERM_NAMES if t != "decay"]
    ref, got, _, _ = _both_gradients(terms, feedback, chunk=5)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("engine", ["reference", "fused"])
def test_strong_decay_keeps_weight_copies_and_matches_autograd(engine, monkeypatch):
    """Below MIN_REBUILD_FACTOR a decay layer restores stored copies instead of dividing."""
    monkeypatch.setattr(adjoint, "MIN_REBUILD_FACTOR", 2.0)  # every decay layer keeps copies
    monkeypatch.setattr(fused, "MIN_REBUILD_FACTOR", 2.0)
    ref, got, _, _ = _both_gradients(["pseudo_grad", "decay", "oja"], "fixed", engine=engine)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("engine", "chunk"), PATHS, ids=PATH_IDS)
def test_per_layer_mask_matches_autograd(engine, chunk):
    terms = ["pseudo_grad", "err_hebb", "oja"]
    per_layer = [["pseudo_grad", "err_hebb"], ["pseudo_grad"], ["pseudo_grad", "oja"]]
    ref, got, _, _ = _both_gradients(terms, "fixed", per_layer, chunk=chunk, engine=engine)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("terms", "feedback"), [
    (["pseudo_grad", "err_hebb", "oja"], "fixed"),  # F_bio
    (["pseudo_grad", "post_act_pre_err", "oja"], "fixed"),
    (["pseudo_grad", "err_hebb", "post_act_pre_err", "oja"], "fixed"),
    (["pseudo_grad", "oja"], "sym"),
    (["oja"], "fixed"),
])
def test_input_layer_in_wy_chunks_matches_autograd(terms, feedback, monkeypatch):
    """Layer 1 under Oja's term runs in chunks of basis products (input_layer.py)."""
    closed = []
    close = input_layer.InputLayerChunks.close
    monkeypatch.setattr(input_layer.InputLayerChunks, "close",
                        lambda self: closed.append(1) or close(self))
    ref, got, ce_ref, ce = _both_gradients(terms, feedback, chunk=5)
    assert len(closed) == 3  # 12 steps: chunks of 5, 5 and 2 took this path
    torch.testing.assert_close(ce, ce_ref, rtol=1e-12, atol=1e-12)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("chunk", "chunks"), [(11, 2), (12, 1), (40, 1), (2, 6)])
def test_input_layer_chunk_edges_match_autograd(chunk, chunks, monkeypatch):
    """A last chunk of one step (11), one exact chunk (12), a chunk longer than the
    episode (40) and many short ones (2), for F_bio over the 12 steps of the tiny task."""
    closed = []
    close = input_layer.InputLayerChunks.close
    monkeypatch.setattr(input_layer.InputLayerChunks, "close",
                        lambda self: closed.append(1) or close(self))
    ref, got, _, _ = _both_gradients(["pseudo_grad", "err_hebb", "oja"], "fixed", chunk=chunk)
    assert len(closed) == chunks
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_input_layer_path_needs_oja_and_plain_terms():
    on = frozenset({0, 2, 9})  # pseudo_grad, err_hebb, oja
    assert input_layer.applies(on, "fixed")
    assert not input_layer.applies(on, "sym")  # e_0 would read the changing W_1
    assert input_layer.applies(frozenset({0, 9}), "sym")
    assert not input_layer.applies(frozenset({0, 2}), "fixed")  # no oja: nothing to gain
    assert not input_layer.applies(frozenset({0, 3, 9}), "fixed")  # decay


# chunk 1 applies every update at once; 5 defers them (and, for declarations the chunked
# input layer takes, runs layer 1 in chunks of basis products)
@pytest.mark.parametrize(("engine", "chunk"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(("term", "pool"), DECLARED, ids=IDS)
def test_every_declared_term_matches_autograd(term, pool, engine, chunk):
    """The reverse pass against autograd in float64 for every declaration (the grammar and
    the recipe-declared terms), each next to pseudo_grad, with fixed feedback."""
    terms = ["pseudo_grad"] if term.name == "pseudo_grad" else ["pseudo_grad", term.name]
    ref, got, ce_ref, ce = _both_gradients(terms, "fixed", chunk=chunk, pool=pool,
                                           engine=engine)
    assert torch.isfinite(ce_ref).all()
    torch.testing.assert_close(ce, ce_ref, rtol=1e-10, atol=1e-12)
    assert ref.abs().max() > 1e-4  # a gradient worth comparing
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)


CHUNKABLE = [(t, p) for t, p in DECLARED if not t.decay and input_layer.applies(
    frozenset(p.index[n] for n in {"pseudo_grad", t.name, "oja"}), "fixed", p)]


@pytest.mark.parametrize(("term", "pool"), CHUNKABLE, ids=[t.name for t, _ in CHUNKABLE])
def test_declared_terms_on_the_chunked_input_layer_match_autograd(term, pool, monkeypatch):
    """Every declaration the chunked input layer takes, with pseudo_grad and Oja's term."""
    closed = []
    close = input_layer.InputLayerChunks.close
    monkeypatch.setattr(input_layer.InputLayerChunks, "close",
                        lambda self: closed.append(1) or close(self))
    terms = list(dict.fromkeys(["pseudo_grad", term.name, "oja"]))
    ref, got, _, _ = _both_gradients(terms, "fixed", chunk=5, pool=pool)
    assert len(closed) == 3
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("engine", ["reference", "fused"])
@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_recipe_terms_with_the_whole_pool_match_autograd(feedback, engine):
    ref, got, _, _ = _both_gradients(RECIPE_POOL.names, feedback, chunk=5, pool=RECIPE_POOL,
                                     engine=engine)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)


def test_input_layer_applies_is_a_property_of_declarations():
    on = frozenset(RECIPE_POOL.index[n] for n in ("pseudo_grad", "hebb", "oja"))
    assert input_layer.applies(on, "sym", RECIPE_POOL)  # no term reads e_0
    on_sum = frozenset(RECIPE_POOL.index[n] for n in ("pseudo_grad", "hebb_sum", "oja"))
    assert not input_layer.applies(on_sum, "fixed", RECIPE_POOL)  # a state-dependent scalar
    assert set(RECIPE_TERMS) == {"hebb", "hebb_sum", "ones_oja"}


def test_trainer_paths_agree_and_choice_is_honoured():
    terms = ["pseudo_grad", "err_hebb", "oja"]
    runs = {}
    for g in ("auto", "autograd"):
        cfg = _config(terms, P=2)
        cfg.gradient = g
        tr = MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu"))
        assert tr.uses_adjoint == (g == "auto")
        runs[g] = [tr.run_episode() for _ in range(3)]
    for a, b in zip(runs["auto"], runs["autograd"], strict=True):
        for key in ("meta_loss", "theta", "angles"):
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]),
                                       rtol=1e-4, atol=1e-6)


def test_unsupported_configurations_fall_back_to_autograd():
    assert not adjoint.supported("plastic", True, True)
    assert not adjoint.supported("sym", False, False)
    assert adjoint.supported("sym", False, True) and adjoint.supported("fixed", False, True)


def test_groups_of_members_give_the_same_numbers_as_one_batch():
    """Members are independent: running them in groups (as on the CPU) changes nothing."""
    args = _adjoint_args([3, 4, 5])
    out = {g: parallel.meta_loss_and_coef_grad(*args, group=g, engine="reference")
           for g in (1, 2, 3)}
    for g in (1, 2):
        _assert_same_meta_outputs(out[g], out[3])


def test_group_size_keeps_groups_even_and_whole_population_on_gpu():
    net = init_net([784, 170, 130, 100, 70, 47], list(range(16)), 0, "xavier", "fixed")
    assert parallel.group_size(net, "cpu") == 8  # 2.1 MB of W, B, G per member
    assert parallel.group_size(net, "meta") == 16  # any non-CPU device: one batch
