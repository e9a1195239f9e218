"""The recipe schemas on pydantic v2 (issue 13): the resolved YAML of every committed recipe
and store is byte for byte what the dataclass walker wrote (it is in plast reproduce's cache
key and in every store), and pydantic's errors read as plast's one-line messages.

``golden/recipe-yaml.json`` was written by the dataclass walker (commit 8b0d8db): per
recipe, sha256 prefixes of the file, of its resolved YAML and of its resolved YAML under
plast reproduce's smoke overrides; per store under results/, of its ``recipe_yaml``
attribute, of that recipe re-resolved, and of plast reproduce's cache key. A recipe or store
edited since is skipped (most are not: the test asserts it).
"""

from __future__ import annotations

import hashlib
import json

import h5py
import pytest
import yaml
from conftest import REPO

from plastcli import reproduce
from plastcli.errors import PlastError
from plastcli.recipes import SCHEMAS, MetaTrainRecipe, load_recipe, recipe_from_yaml, recipe_to_yaml
from plastcli.recipes.fields import Where
from plastcli.recipes.keys import json_schema, keys

GOLDEN = json.loads((REPO / "tests/golden/recipe-yaml.json").read_text())
STORES = sorted(REPO.glob("results/**/*.h5"))


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def test_every_committed_recipe_resolves_to_the_walkers_bytes():
    checked = 0
    for rel, want in GOLDEN["recipes"].items():
        path = REPO / rel
        if not path.is_file() or sha(path.read_bytes()) != want["file"]:
            continue  # edited (or removed) since the fixture was written
        kind = yaml.safe_load(path.read_text())["experiment"]
        assert sha(recipe_to_yaml(load_recipe(path))) == want["plain"], rel
        assert sha(recipe_to_yaml(load_recipe(path, reproduce.SMOKE[kind]))) == want["smoke"], rel
        checked += 1
    assert checked >= 0.8 * len(GOLDEN["recipes"]) and checked >= 50, checked


def test_every_store_recipe_loads_and_keeps_its_resolved_text_and_cache_key():
    assert len(STORES) >= 50
    checked = 0
    for store in STORES:
        with h5py.File(store, "r") as f:
            text, version = str(f.attrs["recipe_yaml"]), str(f.attrs.get("plast_version"))
        resolved = recipe_to_yaml(recipe_from_yaml(text, str(store)))  # every one loads
        want = GOLDEN["stores"].get(store.relative_to(REPO).as_posix())
        if want is None or want["recipe_yaml"] != sha(text):
            continue
        assert sha(resolved) == want["resolved"], store
        assert sha(reproduce.cache_key(text, version)) == want["cache_key"], store
        checked += 1
    assert checked >= 0.8 * len(GOLDEN["stores"]), checked


def test_a_cross_field_check_raises_plast_error_through_pydantic():
    raw = {"experiment": "meta-train", "network": {"layers": [100, 47]}}
    with pytest.raises(PlastError) as err:
        MetaTrainRecipe.model_validate(raw, context={"where": Where("r.yaml")})
    assert str(err.value) == ("r.yaml: key 'network.layers': first size 100 must equal the "
                              "input size 784 of emnist-bymerge")
    assert type(err.value) is PlastError  # not pydantic's ValidationError (PlastError is no
    with pytest.raises(PlastError, match="^<recipe>: key 'network.layers'"):  # ValueError)
        MetaTrainRecipe.model_validate(raw)


META = {"experiment": "meta-train", "network": {"layers": [784, 20, 47]}}
BASE = {"experiment": "baseline", "conditions": [{"name": "BP", "grid": {"pseudo_grad": [0.1]}}]}
RNN = {"experiment": "rnn-memory", "conditions": [{"name": "BPTT"}]}


@pytest.mark.parametrize("base, patch, message", [
    (META, {"colour": 1}, "key 'colour': unknown key; allowed: experiment, name, paper, "
     "description, dataset, task, network, feedback, rule, feedback_rule, meta, population, run"),
    (META, {"task": {"classes": 5, True: 1}}, "key 'task.True': unknown key; allowed: classes, "
     "train_per_class, query_per_class"),
    (META, {"feedback": "mirror"}, "key 'feedback': 'mirror' is not allowed; allowed: sym, "
     "fixed, direct, plastic"),
    (META, {"feedback": 3}, "key 'feedback': expected a string, got 3"),
    (BASE, {"conditions": [{"name": "a", "grid": {"ojaa": [1.0]}}]},
     "key 'conditions[0].grid.ojaa': not among conditions[0].terms (pseudo_grad)"),
    (BASE, {"conditions": [{"name": "a", "terms": ["oja", "x"]}]},
     "key 'conditions[0].terms[1]': 'x' is not allowed; allowed: pseudo_grad, "),
    (META, {"task": {"classes": 5.0}}, "key 'task.classes': expected an integer, got 5.0"),
    (META, {"task": {"classes": True}}, "key 'task.classes': expected an integer, got True"),
    (META, {"task": {"classes": 1}}, "key 'task.classes': 1 is below the minimum 2"),
    (META, {"meta": {"lr": -1}}, "key 'meta.lr': -1.0 is below the minimum 0.0"),
    (META, {"meta": {"grad_clip": "-2"}}, "key 'meta.grad_clip': -2.0 is below the minimum 0.0"),
    (META, {"meta": {"lr": "fast"}}, "key 'meta.lr': expected a number, got 'fast'"),
    (META, {"meta": {"lr": False}}, "key 'meta.lr': expected a number, got False"),
    (META, {"meta": {"lr": float("nan")}}, "key 'meta.lr': nan is not a finite number"),
    (META, {"meta": {"lr": 10**400}}, f"key 'meta.lr': {10**400!r} is not a finite number"),
    (META, {"meta": {"lr": "1e999"}}, "key 'meta.lr': inf is not a finite number"),
    (META, {"meta": {"sym_grad_through_feedback": 1}},
     "key 'meta.sym_grad_through_feedback': expected true/false, got 1"),
    (META, {"name": ["a"]}, "key 'name': expected a string, got ['a']"),
    (META, {"task": [1]}, "key 'task': expected a mapping, got [1]"),
    (META, {"network": {"layers": 784}}, "key 'network.layers': expected list of integer, "
     "got 784"),
    (META, {"network": {"layers": [784, "x", 47]}},
     "key 'network.layers[1]': expected an integer, got 'x'"),
    (META, {"meta": {"bounds": {"oja": "x"}}}, "key 'meta.bounds.oja': expected list of number "
     "or null, got 'x'"),
    (META, {"rule": {"terms": ["oja", 3]}}, "key 'rule.terms': expected list of string or "
     "string, got ['oja', 3]"),
    (META, {"rule": {"init": []}}, "key 'rule.init': expected mapping of name to number, "
     "got []"),
    (RNN, {"conditions": [{"bptt": [0.1]}]}, "key 'conditions[0].name': required: this key "
     "has no default; give it a value"),
    # the first problem a reader meets: unknown keys of a mapping before its fields, fields in
    # the schema's order, depth first, a missing key after the mapping's fields
    (META, {"run": {"device": "gpu"}, "task": {"classes": "x"}, "zzz": 1}, "key 'zzz'"),
    (META, {"run": {"device": "gpu"}, "task": {"classes": "x"}}, "key 'task.classes'"),
    (RNN, {"conditions": [{"oja": ["x"]}]}, "key 'conditions[0].oja[0]'"),
    (RNN, {"conditions": [{"oja": [1.0], "x": 1}]}, "key 'conditions[0].x'"),
])
def test_pydantic_errors_read_as_plast_messages(tmp_path, base, patch, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, **patch}))
    with pytest.raises(PlastError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_a_numeric_string_is_a_number_and_floats_are_floats(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("experiment: meta-train\nnetwork: {layers: [784, 20, 47]}\n"
                    "meta: {lr: 1.0e-3, l1: 1.0e4, theta_jitter: 0}\n")
    r = load_recipe(path)
    assert r.meta.lr == 1e-3 and r.meta.l1 == 1e4 and type(r.meta.theta_jitter) is float


def test_every_key_has_a_meaning():
    for kind in SCHEMAS:
        rows = keys(kind, meaning=True)
        assert [r[:4] for r in rows] == keys(kind)
        assert [r[0] for r in rows if not r[4]] == [], kind


def test_the_json_schema_states_every_bound_as_a_minimum():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    text = json.dumps(schema)
    assert '"ge"' not in text and '"minimum": 1e-06' in text  # pydantic's fallback: none
    validator = jsonschema.Draft202012Validator(schema)
    for bad in ({"experiment": "rnn-memory", "conditions": [{"name": "a", "bptt": [-1]}]},
                {"experiment": "rnn-memory", "conditions": [{"name": "a", "gain": -1}]},
                {"experiment": "meta-train", "meta": {"grad_clip": -1}},
                # term names are open (a recipe may declare its own): the feedback is not
                {"experiment": "baseline", "conditions": [{"name": "a", "feedback": "x"}]}):
        assert list(validator.iter_errors(bad)), bad
    assert not list(validator.iter_errors({"experiment": "meta-train",
                                           "meta": {"grad_clip": None}}))
