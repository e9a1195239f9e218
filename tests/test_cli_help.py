"""``--help`` as the manual: no type placeholders after flags, choices listed, an example of
each command's own kind, the exit codes, the figures drawn, --resume on every store-writing
command."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
import typer
from conftest import REPO
from typer.testing import CliRunner

import plastcli
from plastcli.cli import EXPERIMENTS, FIGURES_DRAWN, app

RUNNER = CliRunner()


def _commands(group, prefix=()):
    """Every command path of the CLI, groups included: ('meta-train',), ('recipe', 'keys').
    Groups are found by their ``commands``: typer 0.29 vendors its own click, so its groups
    are not ``click.Group`` instances."""
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


COMMANDS = [(), *_commands(typer.main.get_command(app))]


def test_the_walk_reaches_the_subcommands_of_groups():
    assert {("recipe", "keys"), ("store", "upgrade"), ("data", "fetch")} <= set(COMMANDS)


def _help(path) -> str:
    r = RUNNER.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "plast")
def test_help_shows_no_type_placeholders(path):
    """Flags render as flags and values by what they are: no <bool>, <list[str]>, <str>,
    <path>, <int range>; arguments by their names in capitals, not {recipe}."""
    text = _help(path)
    assert not re.findall(r"<(bool|list\[\w+\]|str|path|int[^>]*|float[^>]*|text)>", text), text
    assert not re.findall(r"\{[a-z_]+\}", text), text


def test_choices_are_listed_and_a_value_outside_them_is_one_line_and_exit_2():
    assert "[auto|cpu|cuda]" in _help(("meta-train",))
    assert "[2022|2024]" in _help(("figures",)) and "[png|pdf]" in _help(("figures",))
    text = _help(("reproduce",))
    assert "[2022|2024|all]" in text and "[smoke|full]" in text and "[local|ray]" in text
    assert "[" + "|".join(EXPERIMENTS) + "]" in _help(("recipe", "keys"))
    r = RUNNER.invoke(app, ["figures", "--paper", "2022", "--format", "svg"])
    assert r.exit_code == 2 and "allowed: png, pdf" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_the_listed_choices_are_the_ones_the_package_has():
    from plastcli.data import FETCHABLE
    from plastcli.recipes import SCHEMAS

    assert EXPERIMENTS == tuple(SCHEMAS)
    assert "[" + "|".join(FETCHABLE) + "]" in _help(("data", "fetch"))


@pytest.mark.parametrize("kind", EXPERIMENTS)
def test_each_training_command_gives_an_example_recipe_of_its_own_kind(kind):
    from plastcli.recipes import load_recipe

    examples = re.findall(r"recipes/[\w/.-]+\.yaml", _help((kind,)))
    assert examples, kind
    for ex in examples:
        assert load_recipe(REPO / ex).experiment == kind, (kind, ex)


def test_root_help_lists_the_exit_codes_and_shell_completion():
    text = " ".join(_help(()).split())
    for code in ("0 done", "1 a run failed", "2 bad input", "130 Ctrl-C", "143 SIGTERM",
                 "129 SIGHUP"):
        assert code in text, code
    assert "--install-completion" in text


def test_figures_help_names_every_figure_the_registry_draws():
    from plastcli.figures import REGISTRY, _load_modules

    _load_modules()
    for paper, specs in REGISTRY.items():
        listed = [s.strip() for s in FIGURES_DRAWN[paper].split(",")]
        assert sorted(listed) == sorted(s.stem for s in specs), paper
    text = " ".join(_help(("figures",)).split())
    assert "fig8-plastic-feedback" in text and "fig4-grammar-pool" in text


def test_resume_is_offered_by_every_store_writing_command():
    # every one resumes (tests/test_store_reliability.py, tests/test_online_resume.py)
    for kind in ("meta-train", "ablate-layers", "baseline", "init-study", "rnn-memory"):
        assert "--resume" in _help((kind,))
    for kind in ("figures", "show"):
        assert "--resume" not in _help((kind,))


def test_the_version_has_one_source():
    assert importlib.metadata.version("plast") == plastcli.__version__
    assert plastcli.__version__ in RUNNER.invoke(app, ["--version"]).output


def test_show_wraps_long_recipe_lines_instead_of_cropping_them():
    store = REPO / "results/2022/fig4-pool.h5"
    import h5py

    with h5py.File(store, "r") as f:
        recipe = str(f.attrs["recipe_yaml"])
    longest = max(recipe.splitlines(), key=len)
    assert len(longest) > 80  # the description: a line wider than the terminal below
    r = RUNNER.invoke(app, ["show", str(store)], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    shown = set(re.findall(r"[\w.=-]+", r.output))
    missing = [w for w in re.findall(r"[\w.=-]+", longest) if w not in shown]
    assert not missing, missing


@pytest.mark.parametrize("args", [["baseline", "x.yaml", "--nope"], ["meta-train"],
                                  ["figures", "--paper"], ["meta-train", "x.yaml", "--nope"]])
def test_a_usage_error_is_one_line_and_exit_2(args):
    r = RUNNER.invoke(app, args, env={"COLUMNS": "200"})
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
