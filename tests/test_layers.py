"""The package's layers: reading results (store, statistics, tables, plast show, the
figures) never imports torch, and no import runs upward."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO

# Every module that reads results; none of them may pull in torch, even when drawing.
RESULTS_MODULES = ("plastcli.store", "plastcli.statistics", "plastcli.tables",
                   "plastcli.summary", "plastcli.collapse", "plastcli.figures",
                   "plastcli.figures.style", "plastcli.figures.online",
                   "plastcli.figures.paper2022", "plastcli.figures.paper2024",
                   "plastcli.figures.stability")

CHILD = """
import json, sys
for name in {modules!r}:
    __import__(name)
from plastcli.cli import app
for args in {commands!r}:
    try:
        app(args, standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
"""


def test_figures_and_show_run_without_torch(tmp_path):
    """Tiny stores made here (that needs torch); a fresh interpreter imports every
    results module, runs ``plast show`` and ``plast figures`` on them, and has not
    imported torch."""
    from plastcli.experiments import ablate_layers, meta_train
    from plastcli.recipes import load_recipe

    tiny = ["network.layers=[784, 16, 47]", "task.classes=3", "task.train_per_class=4",
            "task.query_per_class=2", "population.seeds=2", "run.device=cpu",
            "meta.episodes=2"]
    paper = tmp_path / "results/2022"
    meta_train.run(load_recipe(REPO / "recipes/2022/fig3-pseudo.yaml", tiny),
                   paper / "fig3-pseudo.h5")
    for name in ("fig3-bp", "fig5-bio", "fig6-ehebb"):  # figures only read: a copy will do
        shutil.copy(paper / "fig3-pseudo.h5", paper / f"{name}.h5")
    ablate_layers.run(load_recipe(REPO / "recipes/2022/table1-ablate-layers.yaml", [
        "dataset.name=mnist", "network.layers=[784, 6, 5, 10]", "task.classes=3",
        "task.train_per_class=3", "task.query_per_class=2", "population.seeds=1",
        "run.device=cpu", "meta.episodes=2", "ablation.burn_in=1"]),
        paper / "table1-ablate-layers.h5")
    figs = tmp_path / "figs"
    commands = [["show", str(paper / "fig3-pseudo.h5")],
                ["show", str(paper / "table1-ablate-layers.h5")],
                ["figures", "--paper", "2022", "--results", str(tmp_path / "results"),
                 "--out", str(figs), "--format", "png"]]
    child = CHILD.format(modules=RESULTS_MODULES, commands=commands)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    for made in ("fig3-pseudo-vs-bp.png", "fig5-bio.png", "fig-meta-accuracy-all.png",
                 "reproduction-2022.md", "table1-ablate-layers.md", "table1-summary.png"):
        assert (figs / made).exists(), made
