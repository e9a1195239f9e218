"""Write recipes/2022/grammar-pool.yaml: the pool search over all 49 grammar terms.

Bounds: the ten built-in terms keep recipes/2022/fig4-pool.yaml's boxes (taken from the
stability map by hand); each of the 39 other terms is boxed into its safe interval from
results/2022/stability/<term>.h5 (``plastcli.figures.stability.safe_bounds``) times
SHRINK, so the bounds are exactly what the committed map says, scaled once. Run
tools/grammar_stability_recipes.py and the 39 stability recipes first.

    python tools/grammar_pool_recipe.py [RESULTS_DIR]     # default: results/2022
"""

import sys
from pathlib import Path

import yaml

from plastcli.figures.stability import GRAMMAR_STORES, safe_bounds
from plastcli.results.store import read_store

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "recipes" / "2022" / "grammar-pool.yaml"
SHRINK = 0.1  # the factor on the map's safe intervals of the 39 non-built-in terms

HEADER = """\
# Written by tools/grammar_pool_recipe.py from the stability map; rerun it, do not edit.
experiment: meta-train
name: grammar-pool
description: >-
  Beyond the paper (issue 10): the L1 pool search over every term of the grammar
  (rule.terms: grammar, 49 terms), with fig4-pool's lambda, proximal L1 and Adam. The ten
  built-in terms keep fig4-pool's boxes; each of the 39 other terms is boxed into its safe
  interval from the stability map shrunk by 10 (SHRINK). Does it rediscover F_bio
  (pseudo_grad, err_hebb, oja)? [choice] SHRINK = 0.1: with the unshrunk boxes every seed
  diverged (lr 1e-3 at episode 1, lr 1e-4 at episodes 1-5, and with meta.rollback too),
  because each box is safe next to pseudo_grad alone, not all 39 at their edges at once;
  shrunk by 10 (and by 100) a 40-episode probe of 3 seeds stayed finite. [choice] Adam lr
  1e-4 (the only lr of 1e-3, 3e-4, 1e-4 that stayed finite over a 15-episode probe with
  the unshrunk boxes). Stabiliser meta.rollback: 10 as a safety net (a member rolled back
  is reported as such). 10 seeds x 500 episodes, as F_bio.
paper: 2022
"""


def render(map_bounds: dict[str, list[float]]) -> str:
    """grammar-pool.yaml from the map's safe intervals of the 39 non-built-in terms."""
    pool = yaml.safe_load((REPO / "recipes/2022/fig4-pool.yaml").read_text())
    body = {k: pool[k] for k in ("dataset", "task", "network", "feedback")}
    body["rule"] = {"terms": "grammar", "init": {"pseudo_grad": 1.0e-3}}
    shrunk = {t: [SHRINK * lo, SHRINK * hi] for t, (lo, hi) in map_bounds.items()}
    body["meta"] = {"lr": 1.0e-4, **{k: pool["meta"][k] for k in ("l1", "l1_mode")},
                    "episodes": 500, "bounds": {**pool["meta"]["bounds"], **shrunk},
                    "rollback": 10}
    body["population"] = {"seeds": 10, "seed": 0}
    body["run"] = pool["run"]
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=96, default_flow_style=None)


def map_bounds(results: Path) -> dict[str, list[float]]:
    """Safe intervals of the 39 grammar terms from ``results/stability/<term>.h5``."""
    missing = [n for n in GRAMMAR_STORES if not (results / f"{n}.h5").is_file()]
    if missing:
        sys.exit(f"missing stability stores under {results}: {', '.join(missing)}")
    return safe_bounds({n: read_store(results / f"{n}.h5") for n in GRAMMAR_STORES})


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "2022"
    bounds = map_bounds(results)
    OUT.write_text(render(bounds))
    held = sorted(t for t, b in bounds.items() if b == [0.0, 0.0])
    print(f"wrote {OUT} ({len(bounds)} map bounds; held at 0: {', '.join(held) or '-'})")


if __name__ == "__main__":
    main()
