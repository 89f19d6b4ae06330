"""DPO-family training: a policy, a frozen reference (the starting policy), preference pairs -> a run dir.

The reference never changes, so its log-probs of every chosen and rejected completion are computed once, before
training, and cached (TRL's `precompute_ref_log_probs=True`); each step then runs only the policy. Metrics on
held-out pairs before and after: the implicit reward r = beta (log pi(y|x) - log ref(y|x)) of chosen and rejected,
their margin, and the preference accuracy (share of pairs with r_chosen > r_rejected; 0 at step 0, all ties).

Besides the pairwise losses: `rpo_alpha` adds RPO's NLL of the chosen completion; `orpo` needs no reference (its
rewards are beta * mean token log-prob, as TRL's ORPOTrainer logs them); `kto` trains on each pair unpaired (chosen
desirable, rejected undesirable, as TRL's KTOTrainer unpairs paired data) with its KL estimate from the same batch.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import ChatTemplate
from llmlab.posttrain.chat_data import train_and_val
from llmlab.posttrain.dpo import (
    chosen_nll,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_odds_ratio_loss,
    robust_dpo_loss,
    simpo_loss,
)
from llmlab.posttrain.logprobs import token_logprobs
from llmlab.posttrain.sft import IGNORE, load_chat_model, tokenize_chat
from llmlab.train.loop import resolve_device

PAIRWISE = ("sigmoid", "robust", "hinge", "ipo", "simpo")  # sigmoid = DPO (cDPO with label_smoothing > 0)
LOSSES = (*PAIRWISE, "orpo", "kto")

Row = tuple[list[int], list[int]]  # (input_ids, completion mask) of one side of a pair


# ------------------------------------------------------------------------------------------------------------ data
def encode_pair(pair: Mapping, tokenizer, template: ChatTemplate | None = None, max_len: int | None = None
                ) -> tuple[Row, Row]:
    """(chosen, rejected): prompt + that side tokenized as one chat; the mask marks the side's trained tokens
    (assistant content + end of turn), exactly what SFT would train."""
    sides = []
    for side in ("chosen", "rejected"):
        ids, labels = tokenize_chat([*pair["prompt"], *pair[side]], tokenizer, template, max_len)
        mask = [int(lab != IGNORE) for lab in labels]
        if not any(mask[1:]):
            raise LlmlabError(f"the {side} completion of a pair has no token within max_len={max_len}")
        sides.append((ids, mask))
    return sides[0], sides[1]


def _pad(rows: Sequence[Row], pad_id: int) -> dict[str, Tensor]:
    """Right-padded (N, T) input_ids, completion_mask, attention_mask of rows."""
    t = max(len(ids) for ids, _ in rows)
    out = {k: torch.zeros((len(rows), t), dtype=torch.long) for k in ("input_ids", "completion_mask",
                                                                       "attention_mask")}
    out["input_ids"].fill_(pad_id)
    for i, (ids, mask) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["completion_mask"][i, : len(ids)] = torch.tensor(mask)
        out["attention_mask"][i, : len(ids)] = 1
    return out


def pair_batch(pairs: Sequence[tuple[Row, Row]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded (2B, T) input_ids, completion_mask, attention_mask: the B chosen rows, then the B rejected."""
    return _pad([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def kl_batch(pairs: Sequence[tuple[Row, Row]], pad_id: int, max_len: int | None = None) -> dict[str, Tensor]:
    """KTO's mismatched (x, y') rows for the pair_batch of the same pairs: row i = the prompt of row i + the completion
    of row i - 1 (cyclic), as TRL 1.16's KTOTrainer rotates completions by +1 within a batch (KTO Eq. 7's z_ref).
    With chosen rows before rejected ones, each prompt gets another pair's completion when B >= 2."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    starts = [mask.index(1) for _, mask in rows]  # first completion token: the prompt is ids[:start]
    kl_rows = []
    for i, ((ids, _), start) in enumerate(zip(rows, starts, strict=True)):
        (other_ids, other_mask), other_start = rows[i - 1], starts[i - 1]
        kl_rows.append(((ids[:start] + other_ids[other_start:])[:max_len],
                        ([0] * start + other_mask[other_start:])[:max_len]))
    return _pad(kl_rows, pad_id)


def pair_token_logps(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """log p of every next token (2B, T-1), unmasked: position t scores input_ids[:, t+1]."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (2B, T, V)
    return token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:])


def _sequence_logps(token_logps: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    lengths = completion_mask[:, 1:].sum(-1).clamp(min=1)
    total = (token_logps * completion_mask[:, 1:].to(token_logps.dtype)).sum(-1)
    return total, total / lengths, lengths


def pair_logps(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(summed log-probs (2B,), mean per-token log-probs (2B,), completion lengths (2B,)) of a pair_batch."""
    return _sequence_logps(pair_token_logps(model, batch), batch["completion_mask"])


@torch.no_grad()
def reference_logps(ref: torch.nn.Module, pairs: Sequence[tuple[Row, Row]], pad_id: int, batch_size: int = 32
                    ) -> Tensor:
    """The frozen reference's summed log-probs of every pair, computed once: (N, 2) = (chosen, rejected)."""
    device = next(ref.parameters()).device
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in pair_batch(pairs[i: i + batch_size], pad_id).items()}
        total, _, _ = pair_logps(ref, batch)
        out.append(total.view(2, -1).T.cpu())  # (B, 2)
    return torch.cat(out) if out else torch.zeros((0, 2))


def preference_loss(loss: str, logps: Tensor, avg: Tensor, lengths: Tensor, ref: Tensor, beta: float,
                    label_smoothing: float = 0.0, gamma: float = 0.5) -> Tensor:
    """Per-pair loss (B,) from the policy's (2B,) log-probs (chosen first) and the cached reference (B, 2)."""
    b = ref.shape[0]
    chosen, rejected = logps[:b], logps[b:]
    if loss == "sigmoid":
        return dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta, label_smoothing)
    if loss == "robust":
        return robust_dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta, label_smoothing or 0.1)
    if loss == "hinge":
        return hinge_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta)
    if loss == "ipo":
        return ipo_loss(chosen, rejected, ref[:, 0], ref[:, 1], lengths[:b], lengths[b:], beta)
    if loss == "simpo":
        return simpo_loss(avg[:b], avg[b:], beta, gamma, label_smoothing)
    raise ConfigError(f"loss={loss!r} must be one of {', '.join(PAIRWISE)} (orpo and kto: use step_loss)")


def step_loss(loss: str, model: torch.nn.Module, batch: Mapping[str, Tensor], ref: Tensor | None, beta: float, *,
              label_smoothing: float = 0.0, gamma: float = 0.5, rpo_alpha: float = 0.0,
              kl: Mapping[str, Tensor] | None = None, ref_kl: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(training loss, per-pair reward margin (B,), chosen NLL per completion token) of one pair_batch, as TRL 1.16
    computes each loss on a batch. ref: the cached reference (B, 2) (None for orpo); kto also takes kl_batch(pairs)
    and the reference's summed log-probs of its rows ref_kl (2B,)."""
    tok = pair_token_logps(model, batch)
    logps, avg, lengths = _sequence_logps(tok, batch["completion_mask"])
    b = logps.shape[0] // 2
    nll = chosen_nll(tok[:b], batch["completion_mask"][:b, 1:])
    if loss == "orpo":
        # L_SFT + lambda L_OR (Hong et al. 2024, Eq. 6); L_SFT over the chosen row's every token, prompt included,
        # as TRL's ORPOTrainer and the ORPO authors' code do. Reward as TRL logs it: beta * mean token log-prob.
        value = chosen_nll(tok[:b], batch["attention_mask"][:b, 1:]) + orpo_odds_ratio_loss(avg[:b], avg[b:],
                                                                                           beta).mean()
        return value, (beta * (avg[:b] - avg[b:])).detach(), nll.detach()
    margin = beta * ((logps[:b] - ref[:, 0]) - (logps[b:] - ref[:, 1]))
    if loss == "kto":
        # rows unpaired: the B chosen desirable, the B rejected undesirable; z_ref from the policy without gradient
        with torch.no_grad():
            kl_logps = pair_logps(model, kl)[0]
        desirable = torch.arange(2 * b, device=logps.device) < b
        value = kto_loss(logps, ref.T.reshape(-1), desirable, kto_kl_estimate(kl_logps, ref_kl), beta).mean()
    else:
        value = preference_loss(loss, logps, avg, lengths, ref, beta, label_smoothing, gamma).mean()
    if rpo_alpha:
        value = value + rpo_alpha * nll  # RPO: + alpha NLL(chosen completion) (Pang et al. 2024)
    return value, margin.detach(), nll.detach()


@torch.no_grad()
def preference_metrics(model: torch.nn.Module, pairs: Sequence[tuple[Row, Row]], ref: Tensor, pad_id: int,
                       beta: float, batch_size: int = 32, average: bool = False) -> dict:
    """Implicit rewards beta (log pi - log ref) on `pairs`: mean chosen / rejected / margin and accuracy. average:
    mean per-token log-probs instead of sums (ORPO's reward with ref = 0)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rewards = []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in pair_batch(pairs[i: i + batch_size], pad_id).items()}
        total, avg, _ = pair_logps(model, batch)
        rewards.append(beta * ((avg if average else total).view(2, -1).T.cpu() - ref[i: i + batch_size]))  # (B, 2)
    model.train(was_training)
    r = torch.cat(rewards)
    margin = r[:, 0] - r[:, 1]
    return {"reward_chosen": r[:, 0].mean().item(), "reward_rejected": r[:, 1].mean().item(),
            "margin": margin.mean().item(), "accuracy": (margin > 0).float().mean().item(), "n": len(pairs)}


# -------------------------------------------------------------------------------------------------------- training
def check_options(loss: str, rpo_alpha: float = 0.0, batch_size: int = 8) -> None:
    """ConfigError for a loss and options that do not go together (before any model loads)."""
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} must be one of {', '.join(LOSSES)}")
    if rpo_alpha < 0:
        raise ConfigError(f"rpo_alpha={rpo_alpha} must be >= 0")
    if rpo_alpha and loss in ("orpo", "kto"):
        why = "orpo already has an NLL term (its SFT loss)" if loss == "orpo" else "TRL's KTO has no NLL term"
        raise ConfigError(f"rpo_alpha={rpo_alpha} adds an NLL term to a pairwise loss ({', '.join(PAIRWISE)}); {why}")
    if loss == "kto" and batch_size < 2:
        raise ConfigError(f"kto needs batch_size >= 2 (got {batch_size}): its KL estimate pairs each prompt with "
                          "another pair's completion from the same batch")


def _shuffled_epochs(n: int, rng: random.Random) -> Iterator[int]:
    """0..n-1 in a fresh seeded shuffle each epoch, forever."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        while order:
            yield order.pop()


def fixed_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Pair indices shuffled once and cut into batches (a last batch of one pair joins the one before). KTO's KL
    estimate uses the completions of its own batch, so batches must stay fixed for the reference's KL log-probs to be
    cached: TRL's KTOTrainer requires train_sampling_strategy='sequential' for the same reason."""
    order = list(range(n))
    rng.shuffle(order)
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] += tail
    return batches


@dataclass
class DPOResult:
    out_dir: str
    loss: str
    beta: float
    rpo_alpha: float
    steps: int
    losses: list[float]
    margins: list[float]  # training-batch mean implicit reward margin per step (orpo: of beta * mean token log-prob)
    chosen_nll: list[float]  # training-batch NLL per chosen completion token per step (what RPO holds down)
    val_before: dict
    val_after: dict
    train_pairs: int
    val_pairs: int
    reference_forward_calls: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def train_dpo(policy_dir: str | Path, pref_data: str | Path | Sequence[Mapping], out_dir: str | Path, *,
              beta: float = 0.1, loss: str = "sigmoid", steps: int = 100, lr: float = 5e-4, batch_size: int = 8,
              val_data: str | Path | Sequence[Mapping] | None = None, label_smoothing: float = 0.0,
              simpo_gamma: float = 0.5, rpo_alpha: float = 0.0, max_len: int | None = None, grad_clip: float = 1.0,
              seed: int = 0, on_error: str = "raise", device: str = "cpu", log=None) -> DPOResult:
    """Train POLICY (run dir or HF dir) on preference pairs with a DPO-family `loss` (orpo: beta is its lambda;
    rpo_alpha > 0: + that times the chosen completion's NLL); write OUT (the model, tokenizer/, dpo_metrics.json) and
    return the metrics. Validation pairs: val_data, else the set's val.jsonl."""
    from llmlab.model.io import save_model
    from llmlab.train.optim import AdamW, clip_grad_norm_

    check_options(loss, rpo_alpha, batch_size)
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    start = time.perf_counter()
    torch.manual_seed(seed)
    dev = resolve_device(device)
    cm = load_chat_model(policy_dir, max_len)
    policy, tokenizer, template, pad_id, max_len = cm.model.to(dev), cm.tokenizer, cm.template, cm.pad_id, cm.max_len

    train, val = train_and_val(pref_data, val_data, "prefs", on_error)
    train_pairs = [encode_pair(p, tokenizer, template, max_len) for p in train.examples]
    val_pairs = [encode_pair(p, tokenizer, template, max_len) for p in val.examples]
    if not train_pairs:
        raise LlmlabError("no preference pairs to train on")
    if loss == "kto" and len(train_pairs) < 2:
        raise LlmlabError("kto needs at least 2 training pairs (its KL estimate mismatches prompts and completions)")

    rng = random.Random(seed)
    batches = fixed_batches(len(train_pairs), batch_size, rng) if loss == "kto" else []
    kl_batches = [kl_batch([train_pairs[i] for i in idx], pad_id, max_len) for idx in batches]
    calls = [0]
    if loss == "orpo":  # reference-free: no reference pass at all; rewards are beta * mean token log-prob
        ref_train, ref_val = torch.zeros((len(train_pairs), 2)), torch.zeros((len(val_pairs), 2))
        ref_kl = []
    else:
        # The reference is the starting policy, frozen. Its log-probs are computed ONCE here and cached: the loop
        # below never runs it again (reference_forward_calls in the metrics counts its forward passes to show it).
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        reference.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        ref_train = reference_logps(reference, train_pairs, pad_id)
        ref_val = reference_logps(reference, val_pairs, pad_id)
        with torch.no_grad():  # kto: the reference's log-probs of each fixed batch's mismatched rows
            ref_kl = [pair_logps(reference, {k: v.to(dev) for k, v in kb.items()})[0] for kb in kl_batches]
        del reference

    average = loss == "orpo"
    val_before = preference_metrics(policy, val_pairs, ref_val, pad_id, beta, average=average) if val_pairs else {}
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = _shuffled_epochs(len(batches) if batches else len(train_pairs), rng)
    losses, margins, nlls = [], [], []
    for step in range(steps):
        kl = k = None
        if batches:  # kto: the next fixed batch
            k = next(order)
            idx, kl = batches[k], {key: v.to(dev) for key, v in kl_batches[k].items()}
        else:
            idx = [next(order) for _ in range(batch_size)]
        batch = {key: v.to(dev) for key, v in pair_batch([train_pairs[i] for i in idx], pad_id).items()}
        loss_value, margin, nll = step_loss(loss, policy, batch, ref_train[idx].to(dev), beta,
                                            label_smoothing=label_smoothing, gamma=simpo_gamma, rpo_alpha=rpo_alpha,
                                            kl=kl, ref_kl=None if k is None else ref_kl[k])
        loss_value.backward()
        if grad_clip:
            clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss_value.detach()))
        margins.append(float(margin.mean()))
        nlls.append(float(nll))
        if log is not None:
            log(step, losses[-1], margins[-1])
    policy.eval()
    val_after = preference_metrics(policy, val_pairs, ref_val, pad_id, beta, average=average) if val_pairs else {}

    out = Path(out_dir)
    save_model(policy.cpu(), out)
    tokenizer.save(out / "tokenizer")
    if template.source is not None:
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result = DPOResult(str(out), loss, beta, rpo_alpha, steps, losses, margins, nlls, val_before, val_after,
                       len(train_pairs), len(val_pairs), calls[0], time.perf_counter() - start)
    (out / "dpo_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
