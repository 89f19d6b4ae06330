"""One AdamW update: decoupled weight decay, bias-corrected moments."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.train.optim import AdamW

STARTER = '''"""Drill: adamw_step. Check with `llmlab drill check adamw_step`."""
import torch
from torch import Tensor


def adamw_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float = 1e-3,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """One AdamW step (Loshchilov & Hutter 2019) for one parameter; `step` is this update's number (1, 2, ...).

    p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t).
    All tensors have the same shape. Returns (new param, new exp_avg, new exp_avg_sq); do not modify the inputs.
    """
    raise NotImplementedError
'''


def adamw_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float = 1e-3,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    p = param.detach().clone()
    p.grad = grad.clone()
    opt = AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    opt.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                    "exp_avg_sq": exp_avg_sq.clone()}
    opt.step()
    return p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]


def _case(g: torch.Generator, shape: tuple[int, ...], step: int, tags, dtype=torch.float32, visible=False,
          fresh=False, **hp) -> Case:
    m = torch.zeros(shape, dtype=dtype) if fresh else randn(g, *shape, dtype=dtype, scale=0.1)
    v = torch.zeros(shape, dtype=dtype) if fresh else randn(g, *shape, dtype=dtype, scale=0.1).square()
    return Case(dict(param=randn(g, *shape, dtype=dtype), grad=randn(g, *shape, dtype=dtype), exp_avg=m,
                     exp_avg_sq=v, step=step, **hp), tags, visible)


def examples() -> list[Case]:
    return [_case(torch.Generator().manual_seed(1), (3,), 1, ("first-step",), visible=True, fresh=True)]


def hidden(g: torch.Generator) -> list[Case]:
    return [_case(g, (4, 5), 1, ("first-step",), fresh=True, lr=0.1),
            _case(g, (4, 5), randint(g, 2, 50), ("bias-correction",), lr=0.01),
            _case(g, (6,), 3, ("weight-decay",), lr=0.1, weight_decay=0.5),
            _case(g, (6,), 5, ("no-decay",), weight_decay=0.0, beta1=0.8, beta2=0.95),
            _case(g, (3, 3), 2000, ("late-step",), eps=1e-6),
            _case(g, (2, 7), 4, ("fp64",), dtype=torch.float64, lr=0.05)]


DRILL = Drill(
    name="adamw_step", area="training", difficulty=2, minutes=10, func="adamw_step",
    statement="Write one AdamW update for one parameter, returning the new parameter and moments.",
    starter=STARTER, reference=adamw_step, sources=(AdamW.step,), examples=examples, hidden=hidden,
    tags=("weight-decay", "bias-correction"),
    hints=("m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g * g, both element-wise.",
           "Bias correction with this step number t: m_hat = m / (1 - b1**t), v_hat = v / (1 - b2**t).",
           "Decoupled decay: p * (1 - lr * wd) applied to the parameter itself, never added to the gradient "
           "(that would be Adam + L2). eps goes outside the sqrt."),
    tag_hints={"weight-decay": "decay the weights directly, p *= 1 - lr * wd; do not add wd * p to the gradient.",
               "bias-correction": "divide by 1 - beta**t with t = step, the update's number starting at 1.",
               "first-step": "on step 1 the corrected update is about lr * sign(g): check the bias correction."},
    banned=("AdamW", "Adam", "adamw", "adam", "_single_tensor_adamw"),
)
