"""Adam for the few tensors of one registration, computed as ``torch.optim.Adam`` computes it.

torch's optimizers import its compiler (``torch._dynamo``) on their first step: 1.3-1.9 s of every
``register`` process on this project's CPU, more than the whole affine stage of a small pair. This
class keeps the same update (no weight decay, no AMSGrad) without that import.
"""

from __future__ import annotations

import math

import torch


class Adam:
    """Adam (Kingma and Ba 2015) over ``params``; ``lr`` may be changed between steps."""

    def __init__(self, params: list[torch.Tensor], lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.params = list(params)
        self.lr, self.eps, self.betas = lr, eps, betas
        self.steps = 0
        self._first = [torch.zeros_like(p) for p in self.params]  # running mean of the gradient
        self._second = [torch.zeros_like(p) for p in self.params]  # running mean of its square

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update from the parameters' ``.grad`` (a parameter without one stays, as in torch)."""
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.steps)
        correction2 = math.sqrt(1 - beta2 ** self.steps)
        for p, first, second in zip(self.params, self._first, self._second):
            if p.grad is None:
                continue
            first.lerp_(p.grad, 1 - beta1)
            second.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(first, (second.sqrt() / correction2).add_(self.eps), value=-step_size)
