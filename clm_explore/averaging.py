"""Trained weights kept aside: a uniform average over the last steps of training (tail averaging, as in SWA), or a
copy of the best epoch's (``FinetuneConfig.keep_best``).

Only the parameters the optimizer trains are averaged: for the row methods those are the row deltas, the
head and the norms, a few hundred thousand numbers, so the average costs no copy of the frozen model
(``torch.optim.swa_utils.AveragedModel`` deep-copies the whole module, which would double sparse's memory).
"""

from __future__ import annotations

import torch
from torch import nn


class TailAverage:
    """Running mean of ``params`` over the steps from ``start_step`` on (steps counted from 1).

    ``update(step)`` after each optimizer step; ``swap()`` exchanges the live weights and the average in
    place, so calling it twice restores training's weights (evaluation in between sees the average).
    """

    def __init__(self, params: list[nn.Parameter], start_step: int):
        self.params = params
        self.start_step = max(1, start_step)
        self.count = 0
        self.means = [torch.zeros_like(p, dtype=torch.float32) for p in params]

    @classmethod
    def for_share(cls, params: list[nn.Parameter], share: float, total_steps: int) -> TailAverage:
        """The average over the last ``share`` of ``total_steps`` (at least the last step)."""
        return cls(params, total_steps - max(1, round(share * total_steps)) + 1)

    @property
    def megabytes(self) -> float:
        """The float32 means' memory (one copy of every averaged parameter)."""
        return sum(m.numel() * m.element_size() for m in self.means) / 2**20

    @property
    def started(self) -> bool:
        return self.count > 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step < self.start_step:
            return
        self.count += 1
        for mean, p in zip(self.means, self.params, strict=True):
            mean.add_(p.detach().float() - mean, alpha=1.0 / self.count)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average (no-op before the first averaged step)."""
        if not self.started:
            return
        for mean, p in zip(self.means, self.params, strict=True):
            live = p.detach().float().clone()
            p.copy_(mean.to(p.dtype))
            mean.copy_(live)


class BestWeights:
    """A copy of ``params`` as they were at the best evaluation so far: ``keep()`` takes it (over the last), and
    ``restore()`` puts it back into the parameters. Only the trained parameters, as for the average."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.copies: list[torch.Tensor] | None = None

    @torch.no_grad()
    def keep(self) -> None:
        if self.copies is None:
            self.copies = [p.detach().clone() for p in self.params]
        else:
            for copy, p in zip(self.copies, self.params, strict=True):
                copy.copy_(p)

    @torch.no_grad()
    def restore(self) -> None:
        if self.copies is not None:
            for copy, p in zip(self.copies, self.params, strict=True):
                p.copy_(copy)
