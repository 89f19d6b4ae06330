"""Offline preference losses on sequence log-probs: DPO (+ cDPO, robust), hinge, IPO, KTO, ORPO, SimPO, and the
NLL term that RPO adds to them.

Inputs are summed completion log-probs (B,) unless a name says `avg` (mean per completion token). Each function
returns the per-example loss (B,); the training loss is its mean. Reference log-probs can be computed once and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.posttrain.ppo import masked_mean


def chosen_nll(token_logps: Tensor, mask: Tensor) -> Tensor:
    """-sum(log p * mask) / sum(mask): NLL per token pooled over the whole batch (a token mean, not a mean of
    per-sequence means), as TRL 1.16 computes DPO's loss_type='sft' and ORPO's / CPO's CrossEntropyLoss.
    token_logps, mask (B, T): the chosen rows' next-token log-probs and the tokens to score.

    RPO (Pang et al. 2024) adds alpha times this, on the chosen completion, to the DPO loss; TRL 1.16 writes it as
    loss_type=['sigmoid', 'sft'], loss_weights=[1, alpha] (formerly `rpo_alpha`). The paper length-normalizes each
    sequence instead; the two agree when the chosen completions have equal lengths."""
    return -masked_mean(token_logps, mask.to(token_logps.dtype))


def _margin(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """Delta = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]."""
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> Tensor:
    """-(1-eps) log sig(beta Delta) - eps log sig(-beta Delta)  (DPO, Rafailov et al. 2023; eps > 0: conservative DPO,
    Mitchell 2023, labels flipped with probability eps)."""
    logits = beta * _margin(chosen, rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def robust_dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1,
                    label_smoothing: float = 0.1) -> Tensor:
    """[-(1-eps) log sig(beta Delta) + eps log sig(-beta Delta)] / (1 - 2 eps): unbiased under label noise eps
    (rDPO, Chowdhury et al. 2024)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 0.5) for robust DPO")
    logits = beta * _margin(chosen, rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def hinge_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float = 0.1) -> Tensor:
    """max(0, 1 - beta Delta)  (SLiC-HF, Zhao et al. 2023, with DPO's reference-normalized margin)."""
    return torch.relu(1 - beta * _margin(chosen, rejected, ref_chosen, ref_rejected))


def ipo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, chosen_len: Tensor,
             rejected_len: Tensor, beta: float = 0.1) -> Tensor:
    """(Delta_avg - 1/(2 beta))^2 with log-ratios averaged per completion token  (IPO, Azar et al. 2023, Eq. 17;
    per-token averaging as in TRL, confirmed by the authors). chosen_len/rejected_len (B,) completion token counts."""
    delta = (chosen - ref_chosen) / chosen_len.clamp(min=1) - (rejected - ref_rejected) / rejected_len.clamp(min=1)
    return (delta - 1 / (2 * beta)) ** 2


def kto_kl_estimate(kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """z_ref = max(0, mean(log pi(y'|x) - log ref(y'|x))) on mismatched pairs (x, y'), no gradient  (KTO Eq. 7)."""
    return (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor | float, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """lambda_D (1 - sig(beta (r - z))) for desirable, lambda_U (1 - sig(beta (z - r))) for undesirable examples,
    r = log pi(y|x) - log ref(y|x), z = kto_kl_estimate  (KTO, Ethayarajh et al. 2024, Eq. 7). desirable (B,) bool."""
    logratio = logps - ref_logps
    chosen_loss = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    rejected_loss = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    return torch.where(desirable.bool(), chosen_loss, rejected_loss)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2  (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio_loss(chosen_avg: Tensor, rejected_avg: Tensor, beta: float = 0.1) -> Tensor:
    """-beta log sig(log odds(y_w) - log odds(y_l)), odds(y) = p / (1 - p) with p = exp(mean token log-prob)
    (ORPO, Hong et al. 2024, Eqs. 4 and 7). The full ORPO loss is the SFT NLL on chosen plus the mean of this."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    return -beta * F.logsigmoid(log_odds)


def simpo_loss(chosen_avg: Tensor, rejected_avg: Tensor, beta: float = 2.0, gamma: float = 0.5,
               label_smoothing: float = 0.0) -> Tensor:
    """-log sig(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma): reference-free, length-normalized, target margin
    gamma  (SimPO, Meng et al. 2024, Eq. 6); label_smoothing as in cDPO."""
    logits = beta * (chosen_avg - rejected_avg) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
