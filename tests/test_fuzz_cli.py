"""Fuzz every subcommand with generated recipes and ``--set`` strings (hypothesis).

Property: the command exits 0, or 2 with exactly one error line; never a traceback;
a refused run leaves no store, lock or temporary file behind. Recipes start from the
shipped ones, mutated at random paths (random keys, types, values and nesting, NaN and
infinity included), or are random mappings or bytes. Compute is never reached in earnest:
the engine entry points are replaced by a stub that raises :class:`ReachedCompute`, which
counts as "accepted" (everything before it, store creation included, runs for real).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import yaml
from conftest import REPO, data_dir
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.experiments import baseline, meta_train, rnn_memory

BASES = {
    "meta-train": "recipes/bio.yaml",
    "ablate-layers": "recipes/2022/table1-ablate-layers.yaml",
    "baseline": "recipes/2024/fig1-depth5.yaml",
    "init-study": "recipes/2024/fig5-naive-init.yaml",
    "rnn-memory": "recipes/2024/fig7-rnn-memory.yaml",
}
RAW = {kind: yaml.safe_load((REPO / path).read_text()) for kind, path in BASES.items()}
WORDS = ["pseudo_grad", "oja", "err_hebb", "sym", "fixed", "plastic", "direct", "xavier",
         "naive", "mnist", "emnist-bymerge", "emnist-balanced", "test", "train", "cpu", "auto",
         "meta-train", "baseline", "rnn-memory", "name", "experiment", "W01", "z", "sigma"]
DATA = data_dir().resolve()


class ReachedCompute(Exception):
    """The stub in place of the engine: the input was accepted."""


def _reached(*_args, **_kwargs):
    raise ReachedCompute


STUBS = [mock.patch.object(meta_train, "MetaTrainer", _reached),
         mock.patch.object(baseline, "grid_stage", _reached),
         mock.patch.object(baseline, "train_members", _reached),
         mock.patch.object(rnn_memory, "grid_stage", _reached),
         mock.patch.object(rnn_memory, "train", _reached)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.integers(-3, 1000),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e-2, 10.0),
    st.sampled_from(WORDS), st.text(max_size=10),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.integers(-2, 5))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=4)), max_leaves=10)


def paths(node, prefix=()) -> list[tuple]:
    """Every path (dict keys and list indices) into a YAML tree."""
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for k, v in items:
        out += paths(v, (*prefix, k))
    return out


def mutate(raw, path: tuple, action: str, value):
    """Set, delete, or add a key under ``path`` (in place)."""
    node = raw
    for k in path[:-1]:
        node = node[k]
    leaf = path[-1]
    if action == "delete":
        del node[leaf]
    elif action == "add" and isinstance(node[leaf], dict):
        node[leaf][value if isinstance(value, (str, int)) else "extra"] = value
    else:
        node[leaf] = value


@st.composite
def recipes(draw):
    """(subcommand, recipe file bytes)."""
    kind = draw(st.sampled_from(list(BASES)))
    source = draw(st.sampled_from(["mutated"] * 6 + ["other-kind", "random", "bytes"]))
    if source == "bytes":
        return kind, draw(st.binary(max_size=200))
    if source == "random":
        return kind, yaml.safe_dump(draw(st.dictionaries(keys, values, max_size=5))).encode()
    base = kind if source == "mutated" else draw(st.sampled_from(list(BASES)))
    raw = yaml.safe_load(yaml.safe_dump(RAW[base]))
    for _ in range(draw(st.integers(0, 3))):
        options = paths(raw)
        if not options:
            break
        mutate(raw, draw(st.sampled_from(options)),
               draw(st.sampled_from(["set", "set", "delete", "add"])), draw(values))
    return kind, yaml.safe_dump(raw, allow_unicode=draw(st.booleans())).encode()


def flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip() \
        .removesuffix("...").strip()


@st.composite
def assignments(draw, kind: str) -> list[str]:
    """--set strings: known dotted keys or random text, YAML or random values."""
    dotted = [".".join(map(str, p)) for p in paths(RAW[kind]) if all(
        isinstance(k, str) for k in p)]
    out = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(dotted), st.text(max_size=12)))
        val = draw(st.one_of(values.map(flow), st.text(max_size=15)))
        out.append(draw(st.sampled_from([f"{key}={val}", key, f"{key}=", val])))
    return out


def check(result, tmp: Path, out: Path, out_existed: bool) -> None:
    """The property (see module doc)."""
    text = result.output
    assert "Traceback" not in text, text
    if isinstance(result.exception, ReachedCompute):
        event("accepted (reached the engine)")
        return  # the run got as far as the engine
    event(f"exit {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, text)
    if result.exit_code == 2:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), text
        if not out_existed:
            assert not out.exists(), f"a refused run left {out}"
    left = [p for p in tmp.rglob("*") if p.suffix in (".lock", ".tmp")]
    assert not left, left


OUTS = ["store.h5", "sub/dir/store.h5", "a-dir", "a-file/store.h5", "existing.h5"]


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_no_input_gives_a_traceback_or_leaves_a_refused_store(data):
    kind, text = data.draw(recipes())
    sets = data.draw(assignments(kind))
    out_choice = data.draw(st.sampled_from(OUTS))
    flags = data.draw(st.lists(st.sampled_from(["--resume", "--overwrite"]), max_size=2,
                               unique=True))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "a-dir").mkdir()
        (tmp / "a-file").write_text("x")
        (tmp / "existing.h5").write_bytes(b"not a store")
        recipe = tmp / "r.yaml"
        recipe.write_bytes(text)
        out = tmp / out_choice
        out_existed = out.exists()
        args = [kind, str(recipe), "--out", str(out), "--data-dir", str(DATA), *flags,
                *[f"--set={s}" for s in sets]]
        with mock.patch.dict("os.environ", {"COLUMNS": "200"}):
            for stub in STUBS:
                stub.start()
            try:
                result = CliRunner().invoke(app, args)
            finally:
                for stub in STUBS:
                    stub.stop()
        check(result, tmp, out, out_existed)


@settings(max_examples=40, deadline=None, database=None)
@given(st.sampled_from(["show", "figures", "data-check", "data-fetch"]),
       st.binary(max_size=100), st.text(max_size=12), st.sampled_from(["png", "pdf", "svg"]))
def test_reading_subcommands_never_give_a_traceback(command, blob, word, fmt):
    """show on random bytes, figures from an empty or odd results folder, data check on
    an empty folder, data fetch of random names."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "f.h5").write_bytes(blob)
        (tmp / "a-file").write_text("x")
        args = {
            "show": ["show", str(tmp / "f.h5")],
            "figures": ["figures", f"--paper={word or '2022'}", "--results",
                        str(tmp / "a-file" if blob[:1] == b"x" else tmp), f"--format={fmt}",
                        "--out", str(tmp / "figs")],
            "data-check": ["data", "check", "--data-dir", str(tmp)],
            "data-fetch": ["data", "fetch", "--data-dir", str(tmp), "--",
                           word or "emnist-bymerge"],
        }[command]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            repr(result.exception)
        if command == "data-check":
            assert result.exit_code == 1  # nothing there: every needed file is missing
        else:
            assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:  # figures first names the figures it skipped
            errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
            assert len(errors) == 1, result.output
        assert not (tmp / "figs").exists() or any((tmp / "figs").iterdir())
