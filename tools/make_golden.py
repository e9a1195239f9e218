"""Regenerate the golden stores that ``tests/test_golden.py`` pins the engine to.

    python tools/make_golden.py

Each golden store is the first episodes of a tiny run of a committed recipe (the cases
below). Rewrite them only on purpose, when a change is meant to move the numbers, and say
so in CHANGELOG.md: the test exists so that drift in the fast gradient shows up across
commits, not only against autograd within one commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (recipe, --set overrides). The three cover every pool term on small layers, the
# paper's network with F_bio (the chunked 784x170 input layer under Oja) and a declared term.
CASES: dict[str, tuple[str, list[str]]] = {
    "pool-tiny": ("recipes/2022/fig4-pool.yaml", [
        "network.layers=[784, 32, 24, 47]", "population.seeds=2", "meta.episodes=3"]),
    "bio-paper-net": ("recipes/bio.yaml", ["population.seeds=1", "meta.episodes=2"]),
    # one seed: the tiny network's second seed diverges in episode 1, an edge a golden
    # test should not sit on
    "custom-term-tiny": ("recipes/custom-term.yaml", [
        "network.layers=[784, 32, 24, 47]", "population.seeds=1", "meta.episodes=3"]),
}
COMMON = ["run.device=cpu", "run.checkpoint_every=1000"]
GOLDEN = REPO / "tests" / "golden"


def make(name: str, out: Path) -> Path:
    """Run one case into ``out`` (a fresh store) in this process; single-threaded, as the
    test runs it."""
    import torch

    from plastcli.experiments import meta_train
    from plastcli.recipes import load_recipe

    torch.set_num_threads(1)
    recipe, sets = CASES[name]
    meta_train.run(load_recipe(REPO / recipe, [*sets, *COMMON]), out, overwrite=True)
    return out


def main() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        path = make(name, GOLDEN / f"{name}.h5")
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
