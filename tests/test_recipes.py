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
        if "/recipes/sweeps/" in f:  # sweep files (plast sweep), checked in test_sweep.py
            continue
        load_recipe(f)


DEFINE = {"my_term": {"a": "y_post", "b": "ones", "s": "1ᵀ y_post", "sign": -1}}


def _with_define(define, terms=("pseudo_grad", "oja", "my_term")):
    recipe = yaml.safe_load(yaml.safe_dump(GOOD))
    recipe["rule"]["terms"] = list(terms) if not isinstance(terms, str) else terms
    recipe["rule"]["define"] = define
    return recipe


@pytest.mark.parametrize("field,value,needle", [
    ("a", "e_pre", "key 'rule.define.my_term.a': 'e_pre' is not allowed; allowed: 'e_post', "
     "'y_post', 'ones'"),
    ("b", "y_post", "key 'rule.define.my_term.b': 'y_post' is not allowed; allowed: 'y_pre', "
     "'e_pre', 'ones', 'y_pre − Mᵀ y_post' (ASCII 'y_pre - M^T y_post')"),
    ("s", "y_post^T y_post", "key 'rule.define.my_term.s': 'y_post^T y_post' is not allowed; "
     "allowed: '1', '1ᵀ y_post' (ASCII '1^T y_post')"),
    ("sign", 2, "key 'rule.define.my_term.sign': '2.0' is not allowed; allowed: -1, +1"),
    ("colour", "red", "key 'rule.define.my_term.colour': unknown key; allowed: a, b, s, sign"),
])
def test_bad_declarations_name_the_key_and_the_allowed_values(tmp_path, field, value, needle):
    define = yaml.safe_load(yaml.safe_dump(DEFINE))
    define["my_term"][field] = value
    with pytest.raises(PlastError) as err:
        load_recipe(_write(tmp_path, _with_define(define)))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("define,terms,needle", [
    ({"oja": {"a": "y_post", "b": "y_pre"}}, ["pseudo_grad"],
     "key 'rule.define.oja': 'oja' is already a term of the grammar"),
    ({"mine": {"a": "e_post", "b": "y_pre", "sign": 1}}, ["pseudo_grad", "mine"],
     "key 'rule.define.mine': 'mine' computes the same term as 'pseudo_grad'"),
    ({}, ["pseudo_grad", "my_term"], "key 'rule.terms[1]': 'my_term' is not allowed"),
    ({}, "all", "key 'rule.terms': 'all' is not allowed; allowed: a list of term names, or "
     "'grammar'"),
    ({"m": {"b": "ones"}}, ["pseudo_grad"], "key 'rule.define.m.a': required; allowed:"),
])
def test_bad_term_names_and_duplicates(tmp_path, define, terms, needle):
    with pytest.raises(PlastError) as err:
        load_recipe(_write(tmp_path, _with_define(define, terms)))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_declared_terms_and_the_grammar_resolve_and_roundtrip(tmp_path):
    from plastcli.core.terms import grammar_names, recipe_pool

    r = load_recipe(_write(tmp_path, _with_define(DEFINE)))
    pool = recipe_pool(r)
    assert pool.names[-1] == "my_term" and len(pool) == 11
    t = pool.decl("my_term")
    assert (t.a, t.b, t.s, t.sign) == ("y_post", "ones", "1^T y_post", -1)
    assert recipe_from_yaml(recipe_to_yaml(r)) == r
    g = load_recipe(_write(tmp_path, _with_define({}, "grammar")))
    assert g.rule.terms == grammar_names() and len(g.rule.terms) == 49
    assert recipe_from_yaml(recipe_to_yaml(g)).rule.terms == g.rule.terms
    # a feedback rule may use a term the forward rule declares
    fb = _with_define(DEFINE)
    fb.update(feedback="plastic", feedback_rule={"terms": ["my_term", "decay"]})
    assert recipe_pool(load_recipe(_write(tmp_path, fb))).names[-1] == "my_term"


def test_set_reaches_list_items_by_index():
    path = REPO / "recipes/2024/fig1-depth5.yaml"
    rec = load_recipe(path, ["conditions.1.grid.oja=[1e-4]", "conditions.0.name=plain BP",
                             "network.layers.1=64"])
    assert rec.conditions[1].grid["oja"] == [1e-4]
    assert rec.conditions[0].name == "plain BP" and rec.network.layers[1] == 64
    plain = load_recipe(path)
    assert rec.conditions[1].grid["pseudo_grad"] == plain.conditions[1].grid["pseudo_grad"]


@pytest.mark.parametrize("bad, match", [
    ("conditions.5.name=x", "index 5 is out of range: 'conditions' has 2 item"),
    ("conditions.first.name=x", "'conditions' is a list; index it by a number"),
    ("conditions.-1.name=x", "out of range"),
    ("conditions.0.name.x=1", "'name' is not a mapping or a list"),
])
def test_set_into_a_list_names_the_key_and_the_range(bad, match):
    with pytest.raises(PlastError, match=match):
        load_recipe(REPO / "recipes/2024/fig1-depth5.yaml", [bad])
