"""Figures: each a function ``(stores) -> matplotlib Figure``, registered per paper.

A figure declares the store names it reads; :func:`draw_paper` draws each figure
whose stores exist and are complete, and names the missing ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from plastcli.errors import PlastError
from plastcli.results.store import StoreData, read_store


@dataclass
class FigureSpec:
    """A figure: its file stem, the stores it needs, and the function that draws it."""

    stem: str
    stores: tuple[str, ...]
    draw: Callable[..., object]  # (dict name -> StoreData) -> Figure
    optional: tuple[str, ...] = ()  # stores used when present


@dataclass
class Report:
    """What :func:`draw_paper` did: files written; figures skipped (a store missing or
    unusable, said in one line each); figures that failed on their stores (an error of the
    drawing code or of a store's shape: the command then exits 1)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


REGISTRY: dict[str, list[FigureSpec]] = {"2022": [], "2024": []}


def register(paper: str, stem: str, stores: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Decorator adding a figure function to a paper's registry."""

    def deco(fn):
        REGISTRY[paper].append(FigureSpec(stem, stores, fn, optional))
        return fn

    return deco


def _load_modules() -> None:
    from plastcli.figures import (  # noqa: F401  (registration)
        paper2022,
        paper2022_online,
        paper2024,
        report2022,
        rnn2024,
        rnn_phase,
        rnn_study,
        stability,
        table1,
    )


def draw_paper(paper: str, results_dir: Path, out_dir: Path, formats: list[str]) -> Report:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plastcli.figures.style import readable_log_axes

    _load_modules()
    report = Report()
    cache: dict[str, StoreData | None] = {}

    def get(name: str) -> StoreData | None:
        if name not in cache:
            path = results_dir / f"{name}.h5"
            try:
                st = read_store(path)
            except PlastError:
                st = None
            cache[name] = st if st is not None and st.complete else None
            if st is not None and not st.complete:
                report.skipped.append(f"{path}: status is '{st.status}', not complete; "
                                      f"figures only read complete stores")
        return cache[name]

    for spec in REGISTRY[paper]:
        stores = {n: get(n) for n in spec.stores}
        missing = [n for n, st in stores.items() if st is None]
        if missing:
            paths = ", ".join(str(results_dir / f"{m}.h5") for m in missing)
            report.skipped.append(f"{spec.stem}: needs {paths}")
            continue
        for n in spec.optional:
            if get(n) is not None:
                stores[n] = get(n)
        try:
            outputs = spec.draw(stores)
        except PlastError as exc:  # one unusable store must not stop the other figures
            report.skipped.append(f"{spec.stem}: {exc}")
            continue
        except (IndexError, KeyError, ValueError) as exc:  # e.g. a store of another shape
            # than the paper's recipe makes, saved under its name: the other figures go on
            plt.close("all")
            names = ", ".join(str(results_dir / f"{n}.h5") for n in stores)
            report.failed.append(f"{spec.stem}: {type(exc).__name__}: {exc} (drawing from "
                                 f"{names})")
            continue
        if not isinstance(outputs, dict):
            outputs = {spec.stem: outputs}
        out_dir.mkdir(parents=True, exist_ok=True)
        for stem, fig in outputs.items():
            if isinstance(fig, (str, bytes)):  # a table written as text
                path = out_dir / stem
                path.write_text(fig)
                report.written.append(path)
                continue
            readable_log_axes(fig)
            for fmt in formats:
                path = out_dir / f"{stem}.{fmt}"
                fig.savefig(path, dpi=150, bbox_inches="tight")
                report.written.append(path)
            plt.close(fig)
    return report
