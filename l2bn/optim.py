"""The training optimizer, `StackedOptimizer`, and where L2 is applied (l2bn/train.py's
`after_step` projects the stack). l2bn/reference.py holds the same rules with torch.optim on
one nn.Module ConvNet: the reference the stacked path is tested equal to.

Mapping of the paper's penalty l2*||w||^2 onto torch.optim (wd = 2*l2, TrialConfig.weight_decay):
- sgd, momentum, adam: `weight_decay=wd` in torch.optim adds wd*w to the gradient before
  momentum / Adam's normalization, i.e. exactly the gradient of the coupled L2 penalty.
- adamw: `weight_decay=wd` is decoupled: w <- w - lr*wd*w after Adam's normalized step
  (Loshchilov & Hutter 2019), the same per-step shrink factor as SGD with L2.
Only conv/linear weights are decayed (per `l2_scope`), never normalization gains or biases.
"""
from __future__ import annotations

import functools

import torch

from .config import TrialConfig
from .theory import ADAM_BETAS

ADAM_EPS = 1e-8  # torch.optim.Adam/AdamW default


class StackedOptimizer:
    """cfg.optimizer's torch.optim update (single-tensor path: same formulas, same order of
    operations) applied to a stack of K models at once, each with its own lr and l2.

    State is keyed by the stack's parameter names; `lr` and the L2 strength are (K,) vectors
    broadcast over each (K, ...) parameter. As in reference.build_optimizer, only the stack's
    decayed parameters (per `l2_scope`) get weight decay: coupled (added to the gradient) for
    sgd, momentum and adam, decoupled (w <- (1 - lr*wd)*w before the Adam step) for adamw.

    `watch` maps parameter names to labels: after each Adam step, `step_sq[label]` is the (K,)
    mean over the parameter's coordinates of Adam's squared bias-corrected step
    (m_hat / (sqrt(v_hat) + eps))^2, the step divided by lr (empty for sgd and momentum).
    """

    def __init__(self, cfgs: list[TrialConfig], decayed: set[str], device: torch.device,
                 watch: dict[str, str] | None = None):
        self.kind, self.momentum = cfgs[0].optimizer, cfgs[0].momentum
        self.decayed = decayed
        self.watch = watch or {}
        self.step_sq: dict[str, torch.Tensor] = {}
        as_vec = functools.partial(torch.tensor, device=device, dtype=torch.float64)
        # Per-model scalars in float64, as torch.optim's Python floats; cast to the
        # parameters' dtype where used, as torch casts a scalar argument.
        self.lr = as_vec([c.lr for c in cfgs])
        self.wd = as_vec([c.weight_decay for c in cfgs])
        self.shrink = as_vec([1 - c.lr * c.weight_decay for c in cfgs])
        self.steps = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]) -> None:
        """One update of every parameter from its .grad."""
        self.steps += 1
        for name, p in params.items():
            decay = name in self.decayed
            grad = p.grad
            if decay and self.kind == "adamw":
                p.mul_(_per_model(self.shrink, p))
            elif decay:
                grad = grad.addcmul(p, _per_model(self.wd, p))  # grad + wd*w: the L2 gradient
            if self.kind in ("sgd", "momentum"):
                self._sgd(name, p, grad)
            else:
                self._adam(name, p, grad)

    def _sgd(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        if self.momentum:
            state = self.state.get(name)
            if state is None:  # torch.optim.SGD: the first buffer is the gradient itself
                self.state[name] = state = {"momentum_buffer": grad.detach().clone()}
            else:
                state["momentum_buffer"].mul_(self.momentum).add_(grad)
            grad = state["momentum_buffer"]
        p.addcmul_(grad, -_per_model(self.lr, p))

    def _adam(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = ADAM_BETAS
        state = self.state.setdefault(
            name, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        step_size = self.lr / bias_correction1
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        p.sub_(_per_model(step_size, p) * state["exp_avg"] / denom)
        if name in self.watch:  # the update above unchanged: it matches torch.optim's rounding
            ratio = (state["exp_avg"] / denom).flatten(1)
            self.step_sq[self.watch[name]] = (torch.linalg.vecdot(ratio, ratio)
                                              / (ratio.shape[1] * bias_correction1**2))

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at positions `keep` (see ModelStack.select)."""
        for attr in ("lr", "wd", "shrink"):
            setattr(self, attr, getattr(self, attr)[keep])
        self.step_sq = {k: v[keep] for k, v in self.step_sq.items()}
        self.state = {n: {k: t[keep] for k, t in s.items()} for n, s in self.state.items()}

    def state_dict(self) -> dict:
        """Step count, per-model hyper-parameters and per-parameter state (for checkpoints)."""
        return {"steps": self.steps, "lr": self.lr, "wd": self.wd, "shrink": self.shrink,
                "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        device = self.lr.device
        self.steps = state["steps"]
        self.lr, self.wd, self.shrink = (state[k].to(device) for k in ("lr", "wd", "shrink"))
        self.state = {n: {k: t.to(device) for k, t in s.items()} for n, s in state["state"].items()}


def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) per-model values shaped to broadcast over a (K, ...) parameter."""
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))
