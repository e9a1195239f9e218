"""The package's layers: reading results (store, statistics, tables, plast show, the
figures) never imports torch, and no import runs upward."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO

# Every module that reads results; none of them may pull in torch, even when drawing.
RESULTS_MODULES = ("plastcli.results", "plastcli.results.store", "plastcli.results.labels",
                   "plastcli.results.statistics", "plastcli.results.tables",
                   "plastcli.results.summary", "plastcli.results.collapse", "plastcli.figures",
                   "plastcli.figures.style", "plastcli.figures.online",
                   "plastcli.figures.paper2022", "plastcli.figures.paper2024",
                   "plastcli.figures.report2022", "plastcli.figures.table1",
                   "plastcli.figures.paper2022_online", "plastcli.figures.rnn2024",
                   "plastcli.figures.rnn_phase", "plastcli.figures.rnn_study",
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


# ------------------------------------------------------------------ allowed import edges
# Layers, top to bottom. A module may import modules of its own layer and of the layers
# listed for it; cli may import anything. "vocabulary" is the torch-free bottom of the
# core (the names recipes, data, network and the store share); "statistics" the numpy
# rules on stored arrays (final values, collapse) that both the engine and the results
# use; recipes and results sit beside the stack and never reach the engine or torch;
# figures read only results.
LAYERS: dict[str, tuple[str, ...]] = {
    "cli": ("plastcli.cli", "plastcli.cli_common", "plastcli.cli_train", "plastcli.cli_results",
            "plastcli.cli_format", "plastcli.__main__"),
    # plast reproduce: plans and watches child `plast` processes, then figures and report
    "orchestration": ("plastcli.reproduce", "plastcli.reproduce_ray", "plastcli.report",
                      "plastcli.sweep"),
    "experiments": ("plastcli.experiments",),  # and every module under it
    "figures": ("plastcli.figures",),  # and every module under it
    "engine": ("plastcli.engine",),  # and every module under it
    "core": ("plastcli.core.network", "plastcli.core.rules", "plastcli.core.rnn"),
    "data": ("plastcli.data", "plastcli.data_cache"),
    "recipes": ("plastcli.recipes",),  # and every module under it
    "results": ("plastcli.results.store", "plastcli.results.labels", "plastcli.results.tables",
                "plastcli.results.summary", "plastcli.results.merge"),
    "statistics": ("plastcli.results", "plastcli.results.statistics",
                   "plastcli.results.collapse"),
    "vocabulary": ("plastcli.core", "plastcli.core.terms", "plastcli.core.vocabulary"),
    "base": ("plastcli", "plastcli.errors", "plastcli.paths", "plastcli.progress",
             "plastcli.signals", "plastcli.lock"),
}
BELOW = {"vocabulary": {"base"}, "statistics": {"base"}}
BELOW["data"] = {"vocabulary", *BELOW["vocabulary"]}
BELOW["core"] = {"data", *BELOW["data"]}
BELOW["engine"] = {"core", "statistics", *BELOW["core"]}
BELOW["recipes"] = {"vocabulary", "base"}
BELOW["results"] = {"statistics", "vocabulary", "base"}
BELOW["figures"] = {"results", *BELOW["results"]}
BELOW["experiments"] = {"engine", "recipes", "results", *BELOW["engine"]}
BELOW["orchestration"] = {"figures", "recipes", *BELOW["figures"]}
ALLOWED = {layer: {layer, *BELOW.get(layer, set())} for layer in LAYERS}
ALLOWED["cli"] = set(LAYERS)
# Layers that must never import torch (reading results and validating recipes are quick).
TORCH_FREE = {"base", "vocabulary", "statistics", "recipes", "results", "figures",
              "orchestration"}
# Edges that break the table and cannot be fixed yet, each with its reason: none now.
# Add one here only with a comment saying why and what would remove it.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
# Layers named by their subpackage: every module under it belongs to the layer.
PACKAGE_LAYERS = ("plastcli.experiments", "plastcli.figures", "plastcli.engine", "plastcli.recipes")


def _modules() -> dict[str, object]:
    from pathlib import Path

    root = REPO / "plastcli"
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = Path(path)
    return out


def _imports(name: str, path, modules) -> set[str]:
    """Every module imported anywhere in a file (module and function level): plastcli
    modules by full name, others by their top-level package."""
    import ast

    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name if a.name.startswith("plastcli") else a.name.split(".")[0]
                      for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            if not mod.startswith("plastcli"):
                found.add(mod.split(".")[0])
                continue
            for a in node.names:  # `from plastcli import tables` imports a module
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod)
    found.discard(name)
    return found


def _layer(name: str) -> str:
    for layer, members in LAYERS.items():
        if name in members:
            return layer
    for layer, members in LAYERS.items():
        if any(name.startswith(m + ".") for m in members if m in PACKAGE_LAYERS):
            return layer
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layers.py")


def test_no_import_runs_upward():
    modules = _modules()
    bad, used = [], set()
    for name, path in modules.items():
        layer = _layer(name)
        for dep in _imports(name, path, modules):
            if dep.startswith("plastcli"):
                if _layer(dep) not in ALLOWED[layer]:
                    if (name, dep) in KNOWN_VIOLATIONS:
                        used.add((name, dep))
                    else:
                        bad.append(f"{name} ({layer}) imports {dep} ({_layer(dep)})")
            elif dep in ("torch", "torchvision") and layer in TORCH_FREE:
                bad.append(f"{name} ({layer}, torch-free) imports {dep}")
    assert not bad, "\n".join(bad)
    assert used == KNOWN_VIOLATIONS, f"fixed now, remove them: {KNOWN_VIOLATIONS - used}"


def test_the_readme_design_map_names_every_module():
    """The README's one-screen map of the layers matches the tree: every module of every
    subpackage (and every top-level module) is named in it."""
    text = (REPO / "README.md").read_text()
    block = text.split("one-screen map of its layers", 1)[1].split("```", 2)[1]
    words = {w.strip(",;:()+") for w in block.split()}
    missing = [str(p.relative_to(REPO)) for p in sorted((REPO / "plastcli").rglob("*.py"))
               if p.stem not in ("__init__", "__main__")
               and not ({p.stem, p.name, f"{p.stem}/"} & words)]
    assert not missing, f"not in the README's design map: {missing}"
