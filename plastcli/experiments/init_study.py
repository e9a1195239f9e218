"""``plast init-study``: the baseline machinery with every condition run under each
initialiser of ``inits`` (P2 Fig 5, Fig 6c-d, Fig S1: naive N(0, 0.01^2) vs xavier).

:func:`plastcli.experiments.baseline.resolve_conditions` expands the conditions into
'<rule> (<init>)'; grid search, training, evaluation and the store are the baseline's.
"""

from __future__ import annotations

from pathlib import Path

from plastcli.experiments.baseline import BaselineResult
from plastcli.experiments.baseline import run as run_baseline
from plastcli.progress import Reporter
from plastcli.recipes import InitStudyRecipe


def run(recipe: InitStudyRecipe, out: Path, *, resume: bool = False, overwrite: bool = False,
        data_dir=None, device: str | None = None, reporter: Reporter | None = None
        ) -> BaselineResult:
    """Grid-search and train every (rule, initialiser) condition; write the store."""
    return run_baseline(recipe, out, resume=resume, overwrite=overwrite, data_dir=data_dir,
                        device=device, reporter=reporter)
