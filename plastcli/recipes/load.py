"""Reading a recipe: the file's YAML, the experiment kind -> schema table, overrides, the
validation, and the resolved recipe as YAML for stores (and back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    REGISTRY,
)
from plastcli.errors import PlastError
from plastcli.recipes.fields import Where, apply_override
from plastcli.recipes.messages import parse
from plastcli.recipes.meta import AblateLayersRecipe, MetaTrainRecipe
from plastcli.recipes.online import BaselineRecipe, InitStudyRecipe, RnnMemoryRecipe

# Experiment kind -> schema.
SCHEMAS: dict[str, type] = {"meta-train": MetaTrainRecipe, "ablate-layers": AblateLayersRecipe,
                            "baseline": BaselineRecipe, "init-study": InitStudyRecipe,
                            "rnn-memory": RnnMemoryRecipe}


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the safe loader keeps
    the last one silently, so a repeated ``meta:`` block would drop the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_recipe_yaml(path: Path) -> dict:
    """The recipe file's YAML mapping; PlastError if it is missing, a directory,
    unreadable, not UTF-8 text, not YAML or not a mapping."""
    if path.is_dir():
        raise PlastError(f"{path} is a directory, not a recipe file")
    if not path.is_file():
        raise PlastError(f"{path}: recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlastError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                         f"offset {exc.start}); save the recipe as UTF-8") from None
    except OSError as exc:
        raise PlastError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        why = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise PlastError(f"{path}: not valid YAML{at}{why}") from None
    except RecursionError:
        raise PlastError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise PlastError(f"{path}: a recipe must be a YAML mapping")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                expected: str | None = None) -> Any:
    """Read, override and validate a recipe; return its schema model.

    Raises PlastError (one line: file, key, allowed values) on any problem.
    """
    path = Path(path)
    where = Where(path, overrides)
    raw = read_recipe_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment, where)
    kind = raw.get("experiment")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        where.fail("experiment", f"{kind!r} is not an experiment; allowed: {', '.join(SCHEMAS)}")
    if expected is not None and kind != expected:
        where.fail("experiment", f"this recipe is for 'plast {kind}', not 'plast {expected}'")
    return parse(SCHEMAS[kind], raw, where)


def recipe_needs(recipes_dir: Path) -> dict[str, list[str]]:
    """Data file (relative path) -> the recipes under ``recipes_dir`` that read it.
    Meta-training recipes read their dataset's split; online ones its train and test."""
    needs: dict[str, list[str]] = {}
    for path in sorted(Path(recipes_dir).rglob("*.yaml")):
        try:
            recipe = load_recipe(path)
        except PlastError:
            continue
        name = recipe.dataset.name
        splits = [recipe.dataset.split] if hasattr(recipe.dataset, "split") else ["train", "test"]
        for split in splits:
            for rel in REGISTRY.get(name, {}).get(split, ()):
                needs.setdefault(rel, []).append(str(path))
    return needs


# Keys added after stores were written, left out of the resolved YAML while empty, so that
# a recipe that does not use them resolves to the same bytes as before (stores' recipe_yaml,
# plast reproduce's cache key; tests/test_recipe_schema.py).
OMITTED_WHEN_EMPTY = ("define",)  # a baseline's own terms (meta-train's are rule.define)


def recipe_to_yaml(recipe: Any) -> str:
    """The resolved recipe (defaults filled in) as YAML, for provenance."""
    raw = recipe.model_dump()
    for key in OMITTED_WHEN_EMPTY:
        if key in raw and not raw[key]:
            del raw[key]
    return yaml.safe_dump(raw, sort_keys=False)


def recipe_from_yaml(text: str, where: str = "<store>") -> Any:
    """Rebuild a recipe from the YAML stored in a result file (a PlastError, one line, if
    it is not a recipe)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlastError(f"{where}: its recipe_yaml is not YAML ({str(exc).splitlines()[0]})"
                         ) from None
    kind = raw.get("experiment") if isinstance(raw, dict) else None
    if kind not in SCHEMAS:
        raise PlastError(f"{where}: its recipe_yaml is not a plast recipe (experiment: "
                         f"{kind!r}; allowed: {', '.join(SCHEMAS)})")
    return parse(SCHEMAS[kind], raw, Where(where))


# Keys that never change a run's numbers: how often it saves itself (resume is exact). A
# resume may change them, and plast reproduce's cache key leaves them out.
NOT_IN_RESULTS = ("run.checkpoint_every",)


def drop_keys(raw: dict, dotted: tuple[str, ...] | list[str]) -> dict:
    """``raw`` (a recipe as plain YAML data) without the keys ``dotted`` ('a.b'), in place."""
    for key in dotted:
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return raw
