"""Write recipes/2022/stability/<term>.yaml for every grammar term outside the ten built-ins.

The ten built-in terms have hand-written stability recipes (19 values x 4 tasks). The 39
other terms of ``rule.terms: grammar`` get a coarser scan [choice: 13 values, decades
1e-6..1e-1 of both signs and 0, x 4 tasks as the built-in rows, ~25 CPU-minutes for all 39], next to
pseudo_grad at F_pseudo's meta-learned value, exactly as the built-in rows. The map's
safe intervals become the coefficient bounds of recipes/2022/grammar-pool.yaml.

    python tools/grammar_stability_recipes.py      # rewrites the 39 files
"""

from pathlib import Path

from plastcli.core.terms import BUILTIN, grammar_names

OUT = Path(__file__).resolve().parents[1] / "recipes" / "2022" / "stability"
VALUES = [-1e-1, -1e-2, -1e-3, -1e-4, -1e-5, -1e-6, 0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]

TEMPLATE = """\
# Written by tools/grammar_stability_recipes.py; edit that script, not this file.
experiment: meta-train
name: stability-{term}
description: >-
  Stability map for the grammar term {term} next to pseudo_grad (issue 10): the inner
  loop only (meta.lr 0, so theta never moves), pseudo_grad fixed at F_pseudo's
  meta-learned value 0.01, 13 log-spaced {term} coefficients of both signs, 4 fresh tasks
  each.
paper: 2022
dataset: {{name: emnist-bymerge, split: test, per_class_cap: 400, cap_seed: 0}}
task: {{classes: 5, train_per_class: 50, query_per_class: 10}}
network: {{layers: [784, 170, 130, 100, 70, 47], init: xavier, beta: 10.0}}
feedback: fixed
rule:
  terms: [pseudo_grad, {term}]
  init: {{pseudo_grad: 1.0e-2}}
meta: {{episodes: 4, lr: 0.0, l1: 0.0}}
population:
  seeds: 1
  seed: 0
  grid:
    rule.init.{term}: [{values}]
run: {{checkpoint_every: 4, device: auto}}
"""


def grammar_extras() -> list[str]:
    """The grammar terms that are not among the ten built-ins, in grammar order."""
    builtin = {t.name for t in BUILTIN}
    return [n for n in grammar_names() if n not in builtin]


def render(term: str) -> str:
    """The stability recipe of one grammar term."""
    values = ", ".join(f"{v:.1e}" if v else "0.0" for v in VALUES)
    return TEMPLATE.format(term=term, values=values)


def main() -> None:
    for term in grammar_extras():
        (OUT / f"{term}.yaml").write_text(render(term))
    print(f"wrote {len(grammar_extras())} recipes to {OUT}")


if __name__ == "__main__":
    main()
