"""Issue 10 §2-3: collapse detection, population grids, proximal L1, bounds, jitter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import REPO
from test_meta_train_store import TINY, episode_arrays

from plastcli.engine.inner import Adam
from plastcli.errors import PlastError
from plastcli.experiments import meta_train
from plastcli.recipes import load_recipe
from plastcli.results.collapse import CollapseDetector, chance_loss, collapsed_at
from plastcli.results.store import read_store

LN5 = math.log(5)


def literal_collapse(ce: list[float], chance: float, window: int) -> int:
    """The rule in words, as a double loop: first e, after `window` episodes in a row
    below chance, with ce[e .. e+window-1] all above chance (NaN breaks either run)."""
    for e in range(len(ce) - window + 1):
        learned = any(all(c < chance for c in ce[s:s + window])
                      for s in range(0, e - window + 1))
        if learned and all(c > chance for c in ce[e:e + window]):
            return e
    return -1


# ------------------------------------------------------------------ collapse detection
def test_collapse_detector_matches_the_literal_rule_on_random_traces():
    rng = np.random.default_rng(0)
    for _ in range(200):
        E = int(rng.integers(1, 40))
        # piecewise traces around chance, with NaNs now and then
        ce = np.where(rng.random(E) < 0.5, LN5 + 0.5, LN5 - 0.5)
        ce = np.where(rng.random(E) < 0.8, np.sort(ce) if rng.random() < 0.5 else ce, ce)
        ce[rng.random(E) < 0.05] = np.nan
        window = int(rng.integers(1, 6))
        got = collapsed_at(ce[None], LN5, window)[0]
        assert got == literal_collapse(list(ce), LN5, window), (ce, window)


def test_never_learned_is_not_a_collapse_and_recovery_keeps_the_first():
    never = np.full((1, 60), 3.8)  # at ln 47 from the start: never learned
    assert collapsed_at(never, LN5, 25)[0] == -1
    trace = np.r_[np.full(30, 1.0), np.full(30, 3.7), np.full(30, 1.0), np.full(30, 3.7)]
    assert collapsed_at(trace[None], LN5, 25)[0] == 30
    short = np.r_[np.full(30, 1.0), np.full(24, 3.7), np.full(10, 1.0)]  # 24 < window
    assert collapsed_at(short[None], LN5, 25)[0] == -1
    hover = np.tile([1.5, 1.7, 1.8], 40)  # at chance, like F_pseudo: never learned
    assert collapsed_at(hover[None], LN5, 25)[0] == -1


def literal_decline(acc: list[float], drop: float, dwin: int, learned_at: int) -> int:
    """The decline rule in words: first e after learning whose window mean of acc[e-dwin+1..e]
    (all finite) is more than `drop` below the best full-window mean that ended before e."""
    means = [np.mean(acc[e - dwin + 1:e + 1]) if e >= dwin - 1
             and all(np.isfinite(acc[e - dwin + 1:e + 1])) else None for e in range(len(acc))]
    for e in range(len(acc)):
        earlier = [m for m in means[:e] if m is not None]
        if e > learned_at and means[e] is not None and earlier \
                and means[e] < max(earlier) - drop:
            return e
    return -1


def test_decline_rule_matches_the_literal_rule_on_random_traces():
    rng = np.random.default_rng(1)
    for _ in range(200):
        E, window, dwin = int(rng.integers(5, 60)), int(rng.integers(1, 4)), int(rng.integers(1, 8))
        ce = np.full(E, LN5 - 0.5)  # always below chance: learned after `window` episodes
        level = np.repeat(rng.random(E // 5 + 1), 5)[:E]  # plateaus, so a drop can happen
        acc = np.clip(level + 0.05 * rng.standard_normal(E), 0, 1)
        acc[rng.random(E) < 0.03] = np.nan
        drop = float(rng.choice([0.1, 0.2, 0.3]))
        got = collapsed_at(ce[None], LN5, window, acc[None], dwin, drop)[0]
        assert got == literal_decline(list(acc), drop, dwin, window - 1), (acc, dwin, drop)


def test_decline_catches_a_slide_below_chance_loss_and_spares_noise():
    rng = np.random.default_rng(2)
    ce = np.full((1, 500), 1.2)  # below ln 5 throughout, as the Intel seed's 1.4
    healthy = 0.7 + 0.06 * rng.standard_normal((1, 500))  # per-episode noise of 50 images
    assert collapsed_at(ce, LN5, 25, healthy)[0] == -1
    slide = healthy.copy()
    slide[0, 350:] -= np.linspace(0, 0.3, 150)  # 0.69 -> ~0.45 over the last 150 episodes
    det = __import__("plastcli.results.collapse", fromlist=["replay"]).replay(ce, LN5, 25, slide)
    assert 400 < det.collapsed_at[0] < 500 and det.reason[0] == 2
    assert collapsed_at(ce, LN5, 25, slide, decline_drop=None)[0] == -1  # the rule turned off
    assert collapsed_at(ce, LN5, 25)[0] == -1  # without accuracies: only the loss rule


def test_detector_state_round_trips():
    a, b = CollapseDetector(3, LN5, 2, 2, 0.2), CollapseDetector(3, LN5, 2, 2, 0.2)
    trace = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [3.0, 3.0, 1.0]]
    acc = [0.7, 0.7, 0.7, 0.6]  # member 2 is 0.1 down after 4 episodes: not yet declined
    for e, row in enumerate(trace):
        a.update(e, np.array(row), np.full(3, acc[e]))
    b.load_state_dict(a.state_dict())
    row, accs = np.array([3.0, 3.0, 1.0]), np.array([0.7, 0.7, 0.3])  # window mean 0.45
    assert a.update(4, row, accs).tolist() == b.update(4, row, accs).tolist() == [1, 2]
    assert a.reason.tolist() == b.reason.tolist() == [1, 1, 2]


def test_chance_is_ln_m():
    assert chance_loss(5) == pytest.approx(1.6094379)


# ------------------------------------------------------------------ Adam: prox and lr per member
def test_proximal_step_soft_thresholds_by_lambda_times_the_step_size():
    torch.manual_seed(0)
    p = torch.randn(3, 4) * 1e-3
    g = torch.randn(3, 4)
    lam = torch.tensor([0.0, 0.5, 50.0])
    ref = torch.optim.Adam([p0 := p.clone().requires_grad_(True)], lr=1e-3)
    p0.grad = g.clone()
    ref.step()
    plain = p0.detach()
    opt = Adam([(3, 4)], 1e-3)
    q = p.clone()
    opt.step([q], [g], torch.ones(3, dtype=torch.bool), prox_l1=lam)
    # after one step Adam's denominator is |g| (+eps), so the threshold is lr * lam / |g|
    thr = 1e-3 * lam.view(3, 1) / (g.abs() + 1e-8)
    expect = plain.sign() * (plain.abs() - thr).clamp(min=0)
    torch.testing.assert_close(q, expect, rtol=1e-5, atol=1e-8)
    unprox = p.clone()
    Adam([(3, 4)], 1e-3).step([unprox], [g], torch.ones(3, dtype=torch.bool))
    assert torch.equal(q[0], unprox[0])  # lambda 0: plain Adam, bit for bit
    assert (q[2] == 0).all()  # a large lambda zeroes every coefficient exactly


def test_per_member_lr_equals_separate_optimisers():
    g = torch.randn(2, 3)
    lrs = [1e-3, 5e-3]
    opt = Adam([(2, 3)], torch.tensor(lrs))
    p = torch.zeros(2, 3)
    opt.step([p], [g], torch.ones(2, dtype=torch.bool))
    for i, lr in enumerate(lrs):
        one = Adam([(1, 3)], lr)
        q = torch.zeros(1, 3)
        one.step([q], [g[i:i + 1]], torch.ones(1, dtype=torch.bool))
        torch.testing.assert_close(p[i:i + 1], q, rtol=0, atol=0)


# ------------------------------------------------------------------ population grid
GRID = ["population.grid.meta.l1=[0.0, 0.5]", "population.grid.rule.init.oja=[1e-3, 3e-3]"]


def test_gridded_run_equals_each_grid_point_run_alone(tmp_path):
    rec = load_recipe(REPO / "recipes/bio.yaml", [*TINY, "meta.episodes=3", *GRID])
    res = meta_train.run(rec, tmp_path / "grid.h5")
    st = read_store(tmp_path / "grid.h5")
    assert st["episodes/theta"].shape[0] == 8 and res.seeds == [0, 1] * 4
    np.testing.assert_array_equal(st["members/l1"], [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(st["members/init_oja"], [1e-3, 1e-3, 3e-3, 3e-3] * 2)
    grid = episode_arrays(tmp_path / "grid.h5")
    for g, (l1, oja) in enumerate([(0.0, 1e-3), (0.0, 3e-3), (0.5, 1e-3), (0.5, 3e-3)]):
        alone = load_recipe(REPO / "recipes/bio.yaml",
                            [*TINY, "meta.episodes=3", f"meta.l1={l1}", f"rule.init.oja={oja}"])
        meta_train.run(alone, tmp_path / f"p{g}.h5")
        one = episode_arrays(tmp_path / f"p{g}.h5")
        for k, v in one.items():
            np.testing.assert_allclose(grid[k][2 * g:2 * g + 2], v, rtol=1e-6, atol=1e-7,
                                       err_msg=f"{k} at grid point {g}")


@pytest.mark.parametrize("bad, match", [
    ("population.grid.meta.beta=[1]", "unknown key"),
    ("population.grid.rule.init.quad_1=[1]", "unknown key"),
    ("population.grid.meta.lr=[]", "at least one value"),
    ("population.grid.meta.l1=[-1]", ">= 0"),
    ("meta.bounds.oja=[1, 0]", "above high"),
    ("meta.bounds.quad_1=[0, 1]", "not among rule.terms"),
    ("meta.bounds.pseudo_grad=[0.1, null]", "outside"),
    ("meta.bounds.oja=[0]", "expected \\[low, high\\]"),
])
def test_bad_grid_or_bounds_is_one_line_naming_the_key(bad, match):
    with pytest.raises(PlastError, match=match):
        load_recipe(REPO / "recipes/bio.yaml", [bad])


def test_ablate_layers_refuses_a_grid():
    with pytest.raises(PlastError, match="population.grid.*assignments"):
        load_recipe(REPO / "recipes/2022/table1-ablate-layers.yaml",
                    ["population.grid.meta.l1=[0, 1]"])


# ------------------------------------------------------------------ stabilisers in a run
def test_bounds_hold_and_proximal_l1_zeroes_terms(tmp_path):
    rec = load_recipe(REPO / "recipes/bio.yaml",
                      [*TINY, "meta.episodes=4", "meta.bounds.oja=[0, 2e-3]",
                       "meta.bounds.err_hebb=[null, 0]", "rule.init.oja=0"])
    meta_train.run(rec, tmp_path / "b.h5")
    th = read_store(tmp_path / "b.h5")["episodes/theta"]
    assert (th[..., 2] >= 0).all() and (th[..., 2] <= 2e-3).all() and (th[..., 1] <= 0).all()
    rec = load_recipe(REPO / "recipes/bio.yaml",
                      [*TINY, "meta.episodes=4", "meta.l1=1e6", "meta.l1_mode=proximal",
                       "meta.bounds={}"])  # bio.yaml's floor would hold theta_oja at 1e-3
    meta_train.run(rec, tmp_path / "p.h5")
    st = read_store(tmp_path / "p.h5")
    assert (st["episodes/theta"] == 0).all()  # every coefficient thresholded to exactly 0
    assert "l1_mode: proximal" in st.attrs["recipe_yaml"]


def test_theta_jitter_is_relative_seeded_and_keeps_zeros(tmp_path):
    outs = []
    for name in ("a", "b"):
        rec = load_recipe(REPO / "recipes/bio.yaml", [*TINY, "meta.episodes=1", "meta.lr=0",
                                                      "meta.theta_jitter=1e-3", "meta.bounds={}"])
        meta_train.run(rec, tmp_path / f"{name}.h5")
        outs.append(read_store(tmp_path / f"{name}.h5")["episodes/theta"][:, 0])
    np.testing.assert_array_equal(outs[0], outs[1])  # a seed fixes the draw
    pseudo = outs[0][:, 0]
    rel = np.abs(pseudo / 1e-3 - 1)
    assert (rel > 0).all() and (rel < 5e-3).all() and pseudo[0] != pseudo[1]
    assert (outs[0][:, 1] == 0).all()  # err_hebb starts at 0; oja (1e-3) is jittered
    assert (outs[0][:, 2] != np.float32(1e-3)).all()


def test_theta_jitter_below_float32_resolution_still_moves_one_step():
    import torch as _t

    from plastcli.engine.meta import _jitter_theta

    theta = _t.tensor([[1e-3, 0.0, 1.3e-2]] * 4)
    _jitter_theta(theta, [0, 1, 2, 3], 1e-9)  # 1e-9 relative is below one float32 step
    base = _t.tensor([1e-3, 0.0, 1.3e-2])
    moved = theta != base
    assert moved[:, [0, 2]].all() and not moved[:, 1].any()
    for v, b in zip(theta[:, 0], theta.new_full((4,), 1e-3), strict=True):
        assert v in (_t.nextafter(b, _t.tensor(1.0)), _t.nextafter(b, _t.tensor(-1.0)))


def test_store_records_the_machine(tmp_path):
    meta_train.run(load_recipe(REPO / "recipes/bio.yaml", [*TINY, "meta.episodes=1"]),
                   tmp_path / "m.h5")
    a = read_store(tmp_path / "m.h5").attrs
    assert a["cpu_model"] and a["blas"] != "" and "PyTorch built with" in a["torch_build"]
    assert read_store(tmp_path / "m.h5")["members/collapsed_at"].tolist() == [-1, -1]


# ------------------------------------------------------------------ the stability map
def test_stability_intervals_are_the_contiguous_runs_around_zero():
    from plastcli.figures.stability import interval

    coef = np.array([0.1, -0.1, -0.01, 0.0, 0.01, 0.03, -0.03])
    rows = {"coef": coef, "ce": np.array([np.inf, 3.8, 1.7, 1.75, 1.2, 1.5, 3.5]),
            "safe": np.array([False, False, True, True, True, True, False]),
            "usable": np.array([False, False, False, False, True, True, False])}
    assert interval(rows, "safe") == (-0.01, 0.03)
    # 0 is not usable: the run around the best usable coefficient
    assert interval(rows, "usable") == (0.01, 0.03)
    rows["safe"][:] = False
    assert interval(rows, "safe") is None


def test_stability_map_is_drawn_from_lr0_grid_stores(tmp_path):
    from plastcli.figures import draw_paper

    rec = load_recipe(REPO / "recipes/2022/stability/oja.yaml",
                      ["network.layers=[784, 16, 47]", "task.train_per_class=4",
                       "task.query_per_class=2", "meta.episodes=2",
                       "population.grid.rule.init.oja=[-0.1, 0.0, 0.01, 100.0]"])
    meta_train.run(rec, tmp_path / "2022/stability/oja.h5")
    st = read_store(tmp_path / "2022/stability/oja.h5")
    assert np.ptp(st["episodes/theta"], axis=1).max() == 0  # lr 0: θ never moves
    meta_train.run(load_recipe(REPO / "recipes/2022/stability/pseudo_grad.yaml",
                               ["network.layers=[784, 16, 47]", "task.train_per_class=4",
                                "task.query_per_class=2", "meta.episodes=2"]),
                   tmp_path / "2022/stability/pseudo_grad.h5")
    rep = draw_paper("2022", tmp_path / "2022", tmp_path / "figs", ["png"])
    assert (tmp_path / "figs/fig-stability-map.png").exists()
    table = (tmp_path / "figs/stability-map.md").read_text()
    assert "| oja |" in table and "| pseudo_grad |" in table and "100" in table  # 100 blows up
    assert not [s for s in rep.skipped if s.startswith(("fig-stability", "stability-map"))]


def test_pool_sweep_figure_picks_the_largest_lambda_close_to_the_best(tmp_path):
    from plastcli.figures import draw_paper
    from plastcli.figures.stability import sweep_rows

    rec = load_recipe(REPO / "recipes/2022/fig4-pool-sweep.yaml",
                      [*TINY, "meta.episodes=2", "population.seeds=1",
                       "population.grid.meta.l1=[0.0, 1.0, 1.0e6]"])
    meta_train.run(rec, tmp_path / "2022/fig4-pool-sweep.h5")
    rows = sweep_rows(read_store(tmp_path / "2022/fig4-pool-sweep.h5"))
    assert rows["l1"].tolist() == [0.0, 1.0, 1e6] and rows["theta"].shape == (3, 10)
    assert (rows["theta"][2] == 0).all()  # λ = 1e6: every term thresholded away
    best = np.nanmax(rows["acc"])
    assert rows["chosen"] == max(v for v, a in zip(rows["l1"], rows["acc"], strict=True)
                                 if a >= best - 0.05)
    draw_paper("2022", tmp_path / "2022", tmp_path / "figs", ["png"])
    assert (tmp_path / "figs/fig4-pool-sweep.png").exists()


def test_grid_key_order_does_not_change_the_members(tmp_path):
    a = meta_train.grid_members(load_recipe(REPO / "recipes/bio.yaml", GRID))
    b = meta_train.grid_members(load_recipe(REPO / "recipes/bio.yaml", GRID[::-1]))
    assert a[0] == b[0] and list(a[1]) == list(b[1]) == sorted(a[1])
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_gridded_run_resumes_to_the_same_numbers(tmp_path):
    from test_meta_train_store import StopAfter

    def rec(n, grid=GRID):
        return load_recipe(REPO / "recipes/bio.yaml", [*TINY, f"meta.episodes={n}", *grid])

    meta_train.run(rec(4), tmp_path / "full.h5")
    with pytest.raises(KeyboardInterrupt):
        meta_train.run(rec(4), tmp_path / "cut.h5", reporter=StopAfter(3))
    meta_train.run(rec(4, GRID[::-1]), tmp_path / "cut.h5", resume=True)
    full, cut = read_store(tmp_path / "full.h5"), read_store(tmp_path / "cut.h5")
    for k in [*episode_arrays(tmp_path / "full.h5"), "members/l1", "members/init_oja",
              "members/collapsed_at"]:
        np.testing.assert_array_equal(full[k], cut[k], err_msg=k)


@pytest.mark.parametrize("bad, match", [
    ("population.grid.meta.l1=[0.1, 0.1]", "listed twice"),
    ("population.grid.meta.l1=[.nan]", "finite"),
    ("meta.bounds.oja=[.nan, 1]", "finite"),
    ("population.grid.rule.init.oja=[-0.1, 0.0]", "grid.rule.init.oja = -0.1 lies outside"),
])
def test_grid_and_bounds_refuse_duplicates_nan_and_starts_outside(bad, match):
    extra = ["meta.bounds.oja=[0, null]"] if "grid.rule.init" in bad else []
    with pytest.raises(PlastError, match=match):
        load_recipe(REPO / "recipes/bio.yaml", [*extra, bad])


# ------------------------------------------------------------------ the grammar pool
def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grammar_stability_recipes_are_what_the_tool_writes_and_load():
    from plastcli.figures.stability import GRAMMAR_TERMS, STABILITY_TERMS

    tool = _tool("grammar_stability_recipes")
    assert len(STABILITY_TERMS) == 10 and len(GRAMMAR_TERMS) == 39
    assert not set(STABILITY_TERMS) & set(GRAMMAR_TERMS)
    for term in GRAMMAR_TERMS:
        path = REPO / f"recipes/2022/stability/{term}.yaml"
        assert path.read_text() == tool.render(term), f"rerun the tool: {path} is stale"
        r = load_recipe(path)
        assert r.rule.terms == ["pseudo_grad", term] and r.meta.lr == 0
        assert 0.0 in r.population.grid[f"rule.init.{term}"]


def test_safe_bounds_are_the_safe_intervals_and_feed_the_grammar_recipe(tmp_path):
    import yaml

    from plastcli.figures.stability import interval, safe_bounds, stability_rows

    rec = load_recipe(REPO / "recipes/2022/stability/g_ones_ones.yaml",
                      [*TINY, "meta.episodes=1", "population.seeds=1",
                       "population.grid.rule.init.g_ones_ones=[-1e6, -1e-6, 0.0, 1e-6, 1e6]"])
    meta_train.run(rec, tmp_path / "g.h5")
    st = read_store(tmp_path / "g.h5")
    bounds = safe_bounds({"stability/g_ones_ones": st})
    assert bounds == {"g_ones_ones": list(interval(stability_rows(st), "safe"))}
    lo, hi = bounds["g_ones_ones"]
    assert lo <= 0 <= hi and lo > -1e6  # -1e6 sends the weights to inf
    text = _tool("grammar_pool_recipe").render({"g_ones_ones": [lo, hi]})
    meta = yaml.safe_load(text)["meta"]
    pool = yaml.safe_load((REPO / "recipes/2022/fig4-pool.yaml").read_text())["meta"]
    shrink = _tool("grammar_pool_recipe").SHRINK
    assert meta["bounds"] == {**pool["bounds"], "g_ones_ones": [shrink * lo, shrink * hi]}
    assert (meta["l1"], meta["l1_mode"]) == (pool["l1"], pool["l1_mode"])
    (tmp_path / "grammar.yaml").write_text(text)
    assert len(load_recipe(tmp_path / "grammar.yaml").rule.terms) == 49


def test_theta_text_lists_a_big_pool_by_its_largest_coefficients():
    from plastcli.figures.report2022 import theta_text

    assert theta_text(["a", "b"], np.array([0.5, -0.25])) == "a 0.5, b -0.25"
    names = [f"t{i}" for i in range(12)]
    theta = np.zeros(12)
    theta[[3, 7, 9]] = [0.1, -0.3, 0.2]
    assert theta_text(names, theta, top=2) == "t7 -0.3, t9 0.2 (3 of 12 nonzero)"


def test_final_per_seed_upto_reads_the_first_episodes_only():
    from plastcli.figures.report2022 import TAIL, final_per_seed

    acc = np.arange(2 * 120, dtype=float).reshape(2, 120)
    st = {"episodes/meta_accuracy": acc}
    np.testing.assert_allclose(final_per_seed(st, "meta_accuracy", upto=100),
                               acc[:, 100 - TAIL:100].mean(1))
    np.testing.assert_allclose(final_per_seed(st, "meta_accuracy"), acc[:, -TAIL:].mean(1))


def test_grammar_search_is_drawn_and_reported_against_f_bio(tmp_path):
    from plastcli.figures import draw_paper

    base = [*TINY, "meta.episodes=2"]
    for name, recipe, extra in (("fig3-pseudo", "fig3-pseudo", []), ("fig5-bio", "fig5-bio", []),
                                ("grammar-pool", "fig4-pool", ["rule.terms=grammar"])):
        r = load_recipe(REPO / f"recipes/2022/{recipe}.yaml", [*base, *extra])
        meta_train.run(r, tmp_path / f"2022/{name}.h5")
    rep = draw_paper("2022", tmp_path / "2022", tmp_path / "figs", ["png"])
    assert (tmp_path / "figs/fig4-grammar-pool.png").exists()
    assert not [s for s in rep.skipped if s.startswith("fig4-grammar-pool")]
    row = next(ln for ln in (tmp_path / "figs/reproduction-2022.md").read_text().splitlines()
               if ln.startswith("| beyond the paper"))
    assert "all 49 grammar terms" in row and "vs F_bio" in row
    assert row.endswith(("| rediscovers F_bio |", "| finds another rule |"))


def test_committed_grammar_recipe_is_what_the_committed_map_gives():
    tool = _tool("grammar_pool_recipe")
    results = REPO / "results/2022"
    if not all((results / f"{n}.h5").is_file() for n in tool.GRAMMAR_STORES):
        pytest.skip("the grammar stability stores are not in this checkout")
    assert (REPO / "recipes/2022/grammar-pool.yaml").read_text() == \
        tool.render(tool.map_bounds(results)), "rerun tools/grammar_pool_recipe.py"


# ------------------------------------------------------------------ rollback stabiliser
NAN_AT = (3, 4, 6)  # episodes at which member 1's meta-loss is forced to NaN


@pytest.fixture
def nan_member_1(monkeypatch):
    """Member 1's episodes in NAN_AT come out non-finite (the engine must not care why)."""
    from plastcli.engine.meta import MetaTrainer

    orig = MetaTrainer.meta_gradient

    def meta_gradient(self, ep, params):
        loss, ce, net, grads = orig(self, ep, params)
        if self.episode in NAN_AT:
            loss = loss.clone()
            loss[1] = float("nan")
        return loss, ce, net, grads

    monkeypatch.setattr(MetaTrainer, "meta_gradient", meta_gradient)


def rollback_recipe(n, rollbacks):
    return load_recipe(REPO / "recipes/bio.yaml",
                       [*TINY, f"meta.episodes={n}", f"meta.rollback={rollbacks}",
                        "meta.rollback_lr_factor=0.5"])


def test_rollback_restores_the_last_good_state_then_diverges_when_spent(tmp_path, nan_member_1):
    off = meta_train.run(rollback_recipe(8, 0), tmp_path / "off.h5")
    on = meta_train.run(rollback_recipe(8, 2), tmp_path / "on.h5")
    a, b = read_store(tmp_path / "off.h5"), read_store(tmp_path / "on.h5")
    assert off.diverged_at.tolist() == [-1, 3]  # without it: dead at the first NaN
    assert on.diverged_at.tolist() == [-1, 6]  # two rollbacks (3, 4), dead at the third NaN
    np.testing.assert_array_equal(b["members/rollbacks"], [0, 2])
    np.testing.assert_array_equal(b["episodes/rolled_back"][1], [0, 0, 0, 1, 1, 0, 0, 0])
    th = b["episodes/theta"][1]  # after episode e
    # episode 3 failed at theta after 2: back to the start of episode 2 (theta after 1);
    # episode 4 failed there again: same place; episode 5 steps on from it
    np.testing.assert_array_equal(th[3], th[1])
    np.testing.assert_array_equal(th[4], th[1])
    assert not np.array_equal(th[5], th[4])
    # the step of episode 5 is the same Adam step at half, then a quarter of the lr:
    # after two rollbacks its size is below that of the original step of episode 2
    assert np.abs(th[5] - th[4]).max() < np.abs(th[2] - th[1]).max()
    assert np.isnan(b["episodes/meta_accuracy"][1, [3, 4]]).all()  # not results
    assert np.isfinite(b["episodes/meta_accuracy"][1, 5])
    # members are independent: member 0 is untouched by member 1's rollbacks
    for k in ("theta", "meta_loss", "meta_accuracy"):
        np.testing.assert_array_equal(a[f"episodes/{k}"][0], b[f"episodes/{k}"][0], err_msg=k)
    assert any("rolled back at episode 3" in m for m in on.messages)
    assert "rolled_back" not in {k.split("/")[-1] for k in a.arrays}  # off: nothing new


def test_rollback_run_resumes_to_the_same_numbers(tmp_path, nan_member_1):
    from test_meta_train_store import StopAfter

    meta_train.run(rollback_recipe(8, 2), tmp_path / "full.h5")
    with pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at episode 4
        meta_train.run(rollback_recipe(8, 2), tmp_path / "cut.h5", reporter=StopAfter(5))
    meta_train.run(rollback_recipe(8, 2), tmp_path / "cut.h5", resume=True)
    full, cut = read_store(tmp_path / "full.h5"), read_store(tmp_path / "cut.h5")
    for k in [*episode_arrays(tmp_path / "full.h5"), "members/rollbacks",
              "members/diverged_at"]:
        np.testing.assert_array_equal(full[k], cut[k], err_msg=k)


def test_rollback_lr_factor_outside_0_1_is_refused():
    with pytest.raises(PlastError, match="meta.rollback_lr_factor.*1.5 is above the maximum 1"):
        load_recipe(REPO / "recipes/bio.yaml", ["meta.rollback_lr_factor=1.5"])
    with pytest.raises(PlastError, match="meta.rollback_lr_factor.*0.0 must be above 0"):
        load_recipe(REPO / "recipes/bio.yaml", ["meta.rollback_lr_factor=0"])


def test_a_run_whose_members_all_diverged_stops_computing(tmp_path, monkeypatch):
    from plastcli.engine.meta import MetaTrainer

    orig_grad, orig_episode, computed = MetaTrainer.meta_gradient, MetaTrainer._compute_episode, []

    def meta_gradient(self, ep, params):  # from episode 2 on every member's loss is NaN
        loss, ce, net, grads = orig_grad(self, ep, params)
        return (loss if self.episode < 2 else torch.full_like(loss, float("nan"))), ce, net, grads

    def compute_episode(self):
        computed.append(self.episode)
        return orig_episode(self)

    monkeypatch.setattr(MetaTrainer, "meta_gradient", meta_gradient)
    monkeypatch.setattr(MetaTrainer, "_compute_episode", compute_episode)
    res = meta_train.run(rollback_recipe(8, 0), tmp_path / "d.h5")
    st = read_store(tmp_path / "d.h5")
    assert computed == [0, 1, 2] and res.diverged_at.tolist() == [2, 2]
    assert st.complete and st["episodes/meta_accuracy"].shape == (2, 8)
    assert np.isnan(st["episodes/meta_accuracy"][:, 2:]).all()
    th = st["episodes/theta"]
    np.testing.assert_array_equal(th[:, 3:], np.repeat(th[:, 2:3], 5, axis=1))  # frozen
    assert any("every member has diverged" in m for m in res.messages)


def test_a_run_on_cuda_gets_its_own_cross_platform_claim_row(tmp_path):
    """A store under results/2022/cuda/ (tools/cuda_compare.sh) is compared with the CPU
    store of the same recipe, and the row names the GPU it ran on."""
    import shutil

    import h5py

    from plastcli.figures import draw_paper

    base = [*TINY, "meta.episodes=2"]
    for name in ("fig3-pseudo", "fig5-bio"):
        r = load_recipe(REPO / f"recipes/2022/{name}.yaml", base)
        meta_train.run(r, tmp_path / f"2022/{name}.h5")
    (tmp_path / "2022/cuda").mkdir()
    shutil.copy(tmp_path / "2022/fig5-bio.h5", tmp_path / "2022/cuda/fig5-bio.h5")
    with h5py.File(tmp_path / "2022/cuda/fig5-bio.h5", "r+") as f:
        f.attrs["device"], f.attrs["device_name"] = "cuda:0", "NVIDIA H200"
    draw_paper("2022", tmp_path / "2022", tmp_path / "figs", ["png"])
    rows = (tmp_path / "figs/reproduction-2022.md").read_text().splitlines()
    row = next(ln for ln in rows if ln.startswith("| cross-machine: F_bio rerun on CUDA"))
    assert "on NVIDIA H200 vs" in row and "(0 diverged, 0 collapsed)" in row
    assert any(ln.startswith("| F_bio (CUDA) |") for ln in rows)
    assert not any("F_bio rerun on a second CPU" in ln for ln in rows)
