"""Recipe validation: every bad recipe is one PlastError naming file, key and allowed values."""

from __future__ import annotations

import glob

import pytest
import yaml
from conftest import REPO

from plastcli.errors import PlastError
from plastcli.recipes import MetaTrainRecipe, load_recipe, recipe_from_yaml, recipe_to_yaml

GOOD = {
    "experiment": "meta-train", "name": "t",
    "dataset": {"name": "emnist-bymerge", "split": "test"},
    "network": {"layers": [784, 20, 47]},
    "rule": {"terms": ["pseudo_grad", "oja"], "init": {"pseudo_grad": 0.001}},
}


def _write(tmp_path, recipe):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


@pytest.mark.parametrize("path,value,needle", [
    (("colour",), "red", "key 'colour': unknown key"),
    (("rule", "terms"), ["pseudo_grad", "ojaa"], "'ojaa' is not allowed; allowed: pseudo_grad"),
    (("meta",), {"episodes": -5}, "key 'meta.episodes': -5 is below the minimum 1"),
    (("meta",), {"episodes": "many"}, "key 'meta.episodes': expected an integer"),
    (("network", "layers"), [100, 20, 47], "must equal the input size 784"),
    (("network", "layers"), [784, 20, 10], "smaller than the 47 classes"),
    (("feedback",), "mirror", "allowed: sym, fixed, direct, plastic"),
    (("rule", "init"), {"oja": 1.0, "decay": 2.0}, "key 'rule.init.decay'"),
    (("dataset", "split"), "train", "'train' not available for emnist-bymerge"),
    (("rule", "layers"), [["pseudo_grad"]], "has 1 entries; the network has 2"),
    (("task",), {"train_per_class": 400}, "exceeds dataset.per_class_cap"),
    (("feedback",), "plastic", "key 'feedback_rule': required"),
])
def test_bad_recipes_name_file_key_and_allowed(tmp_path, path, value, needle):
    recipe = yaml.safe_load(yaml.safe_dump(GOOD))
    node = recipe
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    p = _write(tmp_path, recipe)
    with pytest.raises(PlastError) as err:
        load_recipe(p)
    msg = str(err.value)
    assert msg.startswith(str(p)) and needle in msg and "\n" not in msg


def test_overrides_and_wrong_subcommand(tmp_path):
    p = _write(tmp_path, GOOD)
    r = load_recipe(p, ["meta.episodes=7", "population.seeds=2"])
    assert r.meta.episodes == 7 and r.population.seeds == 2
    with pytest.raises(PlastError, match="expected key=value"):
        load_recipe(p, ["meta.episodes"])
    with pytest.raises(PlastError, match="unknown key"):
        load_recipe(p, ["meta.epochs=3"])
    with pytest.raises(PlastError, match="not 'plast baseline'"):
        load_recipe(p, expected="baseline")


def test_resolved_yaml_roundtrip(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    again = recipe_from_yaml(recipe_to_yaml(r))
    assert isinstance(again, MetaTrainRecipe) and again == r


def test_every_shipped_recipe_validates():
    files = sorted(glob.glob(str(REPO / "recipes/**/*.yaml"), recursive=True))
    assert len(files) >= 7
    for f in files:
        load_recipe(f)
