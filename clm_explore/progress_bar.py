"""A progress bar for a ``finetune`` called from Python: a notebook widget in Jupyter, a text bar in a terminal.

The CLI prints its own progress lines and the app draws cards; a notebook user calling ``finetune`` had neither,
and a run is minutes of silence (Trainer and setfit show a bar by default). tqdm comes with transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clm_explore.training import StepInfo


class ProgressBar:
    """One bar per phase of the preparation (loading, head warm-up, scoring rows, ...), then one over the training
    steps with the loss, examples/s and each epoch's validation accuracy. Feed it ``finetune``'s callbacks."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._phase = ""
        self._curve: dict[str, str] = {}  # the last epoch's accuracy on the curve's split, until the next epoch ends

    def on_phase(self, phase: str, done: int, total: int) -> None:
        if phase == "training":  # its bar starts with the first step, which knows the step count
            return
        if phase != self._phase:
            self._start(phase, max(total, 1))
        self._bar.n = min(done, self._bar.total)
        self._bar.refresh()

    def on_step(self, info: StepInfo) -> None:
        if self._phase != "training":
            self._start("training", info.total_steps)
        if info.eval and "accuracy" in info.eval:
            self._curve = {f"{info.eval.get('split', 'validation')} acc": f"{info.eval['accuracy']:.4f}"}
        shown = {"epoch": info.epoch, "loss": f"{info.loss:.4f}", "ex/s": f"{info.examples_per_second:.0f}"}
        self._bar.set_postfix({**shown, **self._curve}, refresh=False)
        self._bar.n = min(info.step, info.total_steps)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _start(self, phase: str, total: int) -> None:
        from tqdm.auto import tqdm

        self.close()
        self._phase = phase
        self._bar = tqdm(total=total, desc=phase, leave=phase == "training", dynamic_ncols=True)


def combined(*listeners: Callable[..., None] | None) -> Callable[..., None]:
    """One callback that calls each given listener in turn (a caller's own and a bar's)."""
    present = [listener for listener in listeners if listener is not None]

    def call(*args: Any) -> None:
        for listener in present:
            listener(*args)
    return call


@contextmanager
def phase_bar(progress: bool | None, listener: Callable[..., None] | None,
              phase: str | None = None) -> Iterator[Callable[..., None]]:
    """The progress callback of a long call: ``listener`` (the caller's, or None) and, when ``progress`` asks for one
    (None: when nobody listens, as in a notebook), a bar over the phases it reports, closed after the block.
    ``phase``: the listener hears (done, total) of that one phase; else (phase, done, total)."""
    bar = ProgressBar() if progress or (progress is None and listener is None) else None
    shown = None
    if bar is not None:
        shown = bar.on_phase if phase is None else (lambda done, total: bar.on_phase(phase, done, total))
    try:
        yield combined(listener, shown)
    finally:
        if bar is not None:
            bar.close()
