"""DPO-family training: a policy, a frozen reference (the starting policy), preference pairs -> a run dir.

The reference never changes, so its log-probs of every chosen and rejected completion are computed once, before
training, and cached (TRL's `precompute_ref_log_probs=True`); each step then runs only the policy. Metrics on
held-out pairs before and after: the implicit reward r = beta (log pi(y|x) - log ref(y|x)) of chosen and rejected,
their margin, and the preference accuracy (share of pairs with r_chosen > r_rejected; 0 at step 0, all ties).
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import ChatTemplate
from llmlab.posttrain.chat_data import train_and_val
from llmlab.posttrain.dpo import dpo_loss, hinge_loss, ipo_loss, robust_dpo_loss, simpo_loss
from llmlab.posttrain.logprobs import sequence_logprobs
from llmlab.posttrain.sft import IGNORE, load_chat_model, tokenize_chat
from llmlab.train.loop import resolve_device

LOSSES = ("sigmoid", "robust", "hinge", "ipo", "simpo")  # sigmoid = DPO (cDPO with label_smoothing > 0)

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


def pair_batch(pairs: Sequence[tuple[Row, Row]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded (2B, T) input_ids, completion_mask, attention_mask: the B chosen rows, then the B rejected."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    t = max(len(ids) for ids, _ in rows)
    out = {k: torch.zeros((len(rows), t), dtype=torch.long) for k in ("input_ids", "completion_mask",
                                                                       "attention_mask")}
    out["input_ids"].fill_(pad_id)
    for i, (ids, mask) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["completion_mask"][i, : len(ids)] = torch.tensor(mask)
        out["attention_mask"][i, : len(ids)] = 1
    return out


def pair_logps(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(summed log-probs (2B,), mean per-token log-probs (2B,), completion lengths (2B,)) of a pair_batch."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (2B, T, V)
    total = sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"])
    lengths = batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)
    return total, total / lengths, lengths


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
    raise ConfigError(f"loss={loss!r} must be one of {', '.join(LOSSES)} (KTO and ORPO need unpaired data or an "
                      "SFT term: use llmlab.posttrain.dpo's kto_loss / orpo_odds_ratio_loss directly)")


@torch.no_grad()
def preference_metrics(model: torch.nn.Module, pairs: Sequence[tuple[Row, Row]], ref: Tensor, pad_id: int,
                       beta: float, batch_size: int = 32) -> dict:
    """Implicit rewards beta (log pi - log ref) on `pairs`: mean chosen / rejected / margin and accuracy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rewards = []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in pair_batch(pairs[i: i + batch_size], pad_id).items()}
        total, _, _ = pair_logps(model, batch)
        rewards.append(beta * (total.view(2, -1).T.cpu() - ref[i: i + batch_size]))  # (B, 2)
    model.train(was_training)
    r = torch.cat(rewards)
    margin = r[:, 0] - r[:, 1]
    return {"reward_chosen": r[:, 0].mean().item(), "reward_rejected": r[:, 1].mean().item(),
            "margin": margin.mean().item(), "accuracy": (margin > 0).float().mean().item(), "n": len(pairs)}


# -------------------------------------------------------------------------------------------------------- training
@dataclass
class DPOResult:
    out_dir: str
    loss: str
    beta: float
    steps: int
    losses: list[float]
    margins: list[float]  # training-batch mean implicit reward margin per step
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
              simpo_gamma: float = 0.5, max_len: int | None = None, grad_clip: float = 1.0, seed: int = 0,
              on_error: str = "raise", device: str = "cpu", log=None) -> DPOResult:
    """Train POLICY (run dir or HF dir) on preference pairs with a DPO-family `loss`; write OUT (the model,
    tokenizer/, dpo_metrics.json) and return the metrics. Validation pairs: val_data, else the set's val.jsonl."""
    from llmlab.model.io import save_model
    from llmlab.train.optim import AdamW, clip_grad_norm_

    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} must be one of {', '.join(LOSSES)}")
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

    # The reference is the starting policy, frozen. Its log-probs are computed ONCE here and cached: the loop below
    # never runs it again (reference_forward_calls in the metrics counts its forward passes to show it).
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    calls = [0]
    reference.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    ref_train = reference_logps(reference, train_pairs, pad_id)
    ref_val = reference_logps(reference, val_pairs, pad_id)
    del reference

    val_before = preference_metrics(policy, val_pairs, ref_val, pad_id, beta) if val_pairs else {}
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    losses, margins = [], []
    for step in range(steps):
        idx = []
        while len(idx) < batch_size:  # epochs of a seeded shuffle
            if not order:
                order = list(range(len(train_pairs)))
                rng.shuffle(order)
            idx.append(order.pop())
        batch = {k: v.to(dev) for k, v in pair_batch([train_pairs[i] for i in idx], pad_id).items()}
        ref = ref_train[idx].to(dev)  # (B, 2) from the cache
        logps, avg, lengths = pair_logps(policy, batch)
        loss_value = preference_loss(loss, logps, avg, lengths, ref, beta, label_smoothing, simpo_gamma).mean()
        loss_value.backward()
        if grad_clip:
            clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        b = len(idx)
        margin = beta * ((logps[:b] - ref[:, 0]) - (logps[b:] - ref[:, 1]))
        losses.append(float(loss_value.detach()))
        margins.append(float(margin.detach().mean()))
        if log is not None:
            log(step, losses[-1], margins[-1])
    policy.eval()
    val_after = preference_metrics(policy, val_pairs, ref_val, pad_id, beta) if val_pairs else {}

    out = Path(out_dir)
    save_model(policy.cpu(), out)
    tokenizer.save(out / "tokenizer")
    if template.source is not None:
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result = DPOResult(str(out), loss, beta, steps, losses, margins, val_before, val_after, len(train_pairs),
                       len(val_pairs), calls[0], time.perf_counter() - start)
    (out / "dpo_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
