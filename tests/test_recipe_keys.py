"""plast recipe keys / schema / show: read off the schema, and checked against the parser."""

from __future__ import annotations

import copy
import glob
import json

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.errors import PlastError
from plastcli.recipes import SCHEMAS, load_recipe, recipe_to_yaml
from plastcli.recipes.keys import json_schema, keys
from plastcli.recipes.load import OMITTED_WHEN_EMPTY

RECIPES = [f for f in sorted(glob.glob(str(REPO / "recipes/**/*.yaml"), recursive=True))
           if "/recipes/sweeps/" not in f]


def test_every_listed_key_is_accepted_by_set_and_an_unlisted_one_is_not():
    """Each leaf key of `plast recipe keys` exists in the resolved recipe (so --set reaches
    it); a key the parser refuses is not listed."""
    for path, exp in (("recipes/bio.yaml", "meta-train"),
                      ("recipes/2024/fig7-rnn-memory.yaml", "rnn-memory"),
                      ("recipes/2024/fig1-depth5.yaml", "baseline")):
        resolved = yaml.safe_load(recipe_to_yaml(load_recipe(REPO / path)))
        listed = [k for k, *_ in keys(exp)]
        for key in listed:
            if key.split(".")[0] in OMITTED_WHEN_EMPTY and key.split(".")[0] not in resolved:
                continue  # left out of the resolved text while empty
            node = resolved
            for part in key.replace(".N.", ".0.").split("."):
                node = node[int(part)] if isinstance(node, list) else node[part]
        assert "meta.rollback" in listed or exp != "meta-train"
    with pytest.raises(PlastError, match="unknown key"):
        load_recipe(REPO / "recipes/bio.yaml", ["meta.not_a_key=1"])


def test_defaults_are_the_parsers_defaults():
    rows = {k: d for k, _, d, _ in keys("rnn-memory")}
    assert rows["population.seeds"] == "10"  # the recipe's own default, not PopulationSpec's
    assert rows["network.sigma"] == "'softplus'" and rows["conditions.N.name"] == "(required)"


def test_every_shipped_recipe_satisfies_the_schema_and_a_broken_one_does_not():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert len(RECIPES) > 70
    for f in RECIPES:
        raw = yaml.safe_load(open(f, encoding="utf-8"))
        errors = list(validator.iter_errors(raw))
        assert not errors, f"{f}: {errors[0].message}"
    raw = yaml.safe_load((REPO / "recipes/bio.yaml").read_text())
    for bad in ({"meta": {"lr": -1}}, {"meta": {"l1_mode": "other"}}, {"colour": "red"},
                {"meta": {"rollback": "many"}}):
        broken = copy.deepcopy(raw)
        for k, v in bad.items():
            broken[k] = {**broken.get(k, {}), **v} if isinstance(v, dict) else v
        assert list(validator.iter_errors(broken)), bad


def test_recipe_commands_print_and_refuse_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["recipe", "show", str(REPO / "recipes/bio.yaml"),
                                 "--set", "meta.rollback=3"])
    assert r.exit_code == 0 and "rollback: 3" in r.output
    assert yaml.safe_load(r.output)["meta"]["rollback"] == 3
    r = CliRunner().invoke(app, ["recipe", "schema", "--out", str(tmp_path / "s.json")])
    assert r.exit_code == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert {b["properties"]["experiment"]["const"] for b in doc["oneOf"]} == set(SCHEMAS)
    r = CliRunner().invoke(app, ["recipe", "keys", "nope"])
    assert r.exit_code == 2 and "allowed: meta-train" in r.output
    r = CliRunner().invoke(app, ["recipe", "show", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "not found" in r.output


@pytest.mark.parametrize("width", [80, 200])
def test_recipe_keys_prints_every_key_uncut_at_any_width(width):
    from plastcli.recipes.keys import keys

    r = CliRunner().invoke(app, ["recipe", "keys", "meta-train"], env={"COLUMNS": str(width)},
                           terminal_width=width)
    assert r.exit_code == 0, r.output
    missing = [k for k, *_ in keys("meta-train") if k not in r.output]
    assert not missing and "…" not in r.output, missing


def test_recipe_schema_out_a_directory_is_one_line_and_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["recipe", "schema", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output
    assert len(r.output.strip().splitlines()) == 1
