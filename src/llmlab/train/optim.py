"""AdamW from scratch, the weight-decay split every LLM recipe uses, and global-norm gradient clipping.

`AdamW` is a `torch.optim.Optimizer`: per-group hyperparameters (a schedule writes `group["lr"]` each step, see
`schedules.set_lr`), and `state_dict()` / `load_state_dict()` from torch's machinery. Its per-parameter state has
torch.optim.AdamW's keys and types (`step` a scalar tensor, `exp_avg`, `exp_avg_sq`), so a checkpoint from
either optimizer resumes in the other. tests/train/test_optim.py proves it equal to `torch.optim.AdamW`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from llmlab.errors import ConfigError


class AdamW(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015) with decoupled weight decay (Loshchilov & Hutter 2019).

    For each parameter p with gradient g, at step t = 1, 2, ...:
        p <- p * (1 - lr * weight_decay)          decay the weights directly, not through g
        m <- beta1 * m + (1 - beta1) * g          first moment (mean of g)
        v <- beta2 * v + (1 - beta2) * g^2        second moment (uncentred variance of g)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
    Parameters whose .grad is None are skipped (no state, no decay), as in torch.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if lr < 0:
            raise ConfigError(f"lr={lr} must be >= 0")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"betas[{i}]={beta} must be in [0, 1)")
        if eps < 0:
            raise ConfigError(f"eps={eps} must be >= 0")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() if given (torch's contract)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ConfigError("AdamW does not support sparse gradients (nn.Embedding(sparse=True))")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)  # a scalar tensor, as torch.optim.AdamW keeps it
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"].item()

                # decoupled weight decay: shrink p itself, never mixed into m or v  (Loshchilov & Hutter 2019)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                # m <- beta1 m + (1 - beta1) g, written as lerp(m, g, 1 - beta1) = m + (1 - beta1)(g - m)
                m.lerp_(g, 1 - beta1)
                # v <- beta2 v + (1 - beta2) g^2
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                # bias correction (Kingma & Ba 2015, sec 3): m and v start at 0, so early averages are too small.
                # p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps): the same value as with m_hat, v_hat and the
                # same operation order as torch (eps is added after the v correction), hence equal to the last bit
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                denom = (v.sqrt() / bias_correction2**0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias_correction1)
        return loss


def param_groups_for_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay every parameter with dim >= 2, none for dim < 2 (norm gains, biases).

    nanoGPT's rule (also nanochat, HF Trainer in spirit): matrices - linear weights and embedding tables - are
    decayed; vectors are not, since shrinking a norm's gain or a bias toward 0 only fights the layer's scale.
    Frozen parameters (requires_grad=False) are left out; a tied weight appears once. Empty groups are dropped.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a shared tensor once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def clip_grad_norm_(params: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale all gradients by min(1, max_norm / (||g|| + 1e-6)), ||g|| the L2 norm of all of them as one vector.

    Returns ||g|| before clipping (as torch.nn.utils.clip_grad_norm_, whose 1e-6 guard this copies).
    Parameters without .grad are ignored; with none at all the norm is 0.
    """
    if isinstance(params, Tensor):
        params = [params]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    # ||g|| = sqrt(sum_i ||g_i||^2): the norm of the per-tensor norms
    total_norm = torch.stack([torch.linalg.vector_norm(g) for g in grads]).square().sum().sqrt()
    clip_coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)  # a tensor, not an `if`: no host sync on GPU
    for g in grads:
        g.mul_(clip_coef)
    return total_norm
