"""Progress reporting that experiments call and the CLI renders (Rich)."""

from __future__ import annotations

from contextlib import AbstractContextManager


class Reporter(AbstractContextManager):
    """Silent reporter: experiments call ``start``, ``update`` and ``message``."""

    def start(self, total: int, done: int = 0, label: str = "") -> None:
        pass

    def update(self, done: int, **metrics: float) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def __exit__(self, *exc) -> None:
        return None


class RichReporter(Reporter):
    """A Rich progress bar with the latest metrics and an ETA."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.live = False

    def __enter__(self):
        return self  # the bar starts with the first task: an early error prints no blank line

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()
        return None

    def start(self, total: int, done: int = 0, label: str = "") -> None:
        if not self.live:
            self.progress.start()
            self.live = True
        self.task = self.progress.add_task(label, total=total, completed=done, metrics="")
        self.total, self.label, self.last_tenth = max(total, 1), label, done * 10 // max(total, 1)

    def update(self, done: int, **metrics: float) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.progress.update(self.task, completed=done, metrics=text)
        tenth = done * 10 // self.total
        if not self.console.is_terminal and tenth > self.last_tenth:
            # a log file sees no live bar: say how far we are every 10%
            self.last_tenth = tenth
            self.console.print(f"{self.label}: {done}/{self.total}  {text}", highlight=False)

    def message(self, text: str) -> None:
        self.progress.console.print(text)
