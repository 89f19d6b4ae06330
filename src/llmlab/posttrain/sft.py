"""Supervised fine-tuning: chat examples -> token ids with labels on the assistant's tokens only -> masked loss.

Which tokens are trained (`tokenize_chat`): each assistant message's content and the end-of-turn token that closes
it (ChatML: `content<|im_end|>`), so the model learns both the answer and to stop. Not trained: the system and user
turns, the `<|im_start|>assistant\\n` header (the generation prompt, which inference supplies) and the newline after
`<|im_end|>` (never generated: generation stops at <|im_end|>). This is TRL's `assistant_only_loss=True` with a chat
template whose `{% generation %}` block holds `content + '<|im_end|>'`: a token is trained when it overlaps an
assistant span of the rendered text (transformers' `return_assistant_tokens_mask`, char_to_token on the span's ends).
The spans are found by rendering the conversation up to each assistant turn, so any chat template whose renderings
are prefixes of each other works (ChatML, HF Jinja templates such as Llama 3's or Qwen2.5's).

Loss (`sft_loss`): sum over trained tokens of -log p(token | prefix), divided by their number: the mean over
trained tokens of the whole batch, not a mean of per-example means (TRL's SFTTrainer: `per_token_loss.sum() /
num_tokens`). tests/posttrain/test_sft.py checks it equal to `SFTTrainer.compute_loss` on the same batch and model.

Packing (`pack`): several examples in one row, positions restarting at 0 for each, labels masked at each start,
and `segment_ids` passed to `Transformer.forward` so a token sees earlier tokens of its own example only
(block-diagonal causal attention); tests/posttrain/test_sft.py checks packed loss == separate rows.
"""

from __future__ import annotations

import json
import math
import random
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.chat_template import END_OF_TURN, ChatTemplate, load_chat_template
from llmlab.model.transformer import Transformer
from llmlab.posttrain.chat_data import GRADED, grade, train_and_val
from llmlab.train.loop import resolve_device

IGNORE = -100  # label of a token that is not trained (torch / HF ignore_index)


# ------------------------------------------------------------------------------------------------------ tokenizing
def assistant_spans(messages: Sequence[Mapping[str, Any]], template: ChatTemplate | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, [(start, end) character span of each assistant turn's trained text]).

    A turn's span starts after the generation prompt (render(messages[:i], add_generation_prompt=True)) and ends
    after the last end-of-turn token of render(messages[:i+1]) (ChatML: content + <|im_end|>, no newline).
    """
    template = template or ChatTemplate()
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = template.render(messages[:i], add_generation_prompt=True) if i else ""
        upto = template.render(messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise LlmlabError(f"the chat template does not render messages[:{i}] as a prefix of the conversation, "
                              f"so assistant turn {i} cannot be located; use a template that renders earlier turns "
                              "the same way whatever follows them")
        turn = upto[len(prompt):]
        end = max((turn.rfind(eot) + len(eot) for eot in END_OF_TURN if eot in turn), default=len(turn.rstrip()))
        spans.append((len(prompt), len(prompt) + end))
    return text, spans


def token_byte_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """The UTF-8 byte offset where each token ends in the decoded text (special tokens count as their text)."""
    special = {i: t.encode("utf-8") for t, i in tokenizer.special_tokens.items()}
    piece = getattr(tokenizer, "decode_bytes", None)  # Tokenizer; the byte tokenizer is one byte per id
    ends, pos = [], 0
    for i in ids:
        pos += len(special[i]) if i in special else (len(piece([i])) if piece else 1)
        ends.append(pos)
    return ends


def tokenize_chat(messages: Sequence[Mapping[str, Any]], tokenizer, template: ChatTemplate | None = None,
                  max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels = the token id on assistant tokens, IGNORE elsewhere.

    The whole text is encoded at once (as TRL does), so tokens are the ones inference sees; a token that
    straddles a span boundary is trained. max_len keeps the first max_len tokens (TRL's truncation "keep_start").
    """
    text, spans = assistant_spans(messages, template)
    if getattr(tokenizer, "normalizer", None):  # e.g. Qwen2's NFC: offsets must be those of the encoded text
        norm = tokenizer.normalizer
        spans = [(len(unicodedata.normalize(norm, text[:a])), len(unicodedata.normalize(norm, text[:b])))
                 for a, b in spans]
        text = unicodedata.normalize(norm, text)
    ids = tokenizer.encode(text, allowed_special="all")
    ends = token_byte_ends(tokenizer, ids)
    if ends and ends[-1] != len(text.encode("utf-8")):
        raise LlmlabError("the tokenizer's tokens do not decode back to the rendered chat text; cannot map "
                          "assistant spans to tokens")
    byte_spans = [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in spans]
    labels, start = [], 0
    for tok, end in zip(ids, ends, strict=True):
        trained = any(start < b and end > a for a, b in byte_spans)  # the token overlaps an assistant span
        labels.append(tok if trained else IGNORE)
        start = end
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


# -------------------------------------------------------------------------------------------------------- batching
def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad (input_ids, labels) rows: input_ids, labels (IGNORE on padding), attention_mask, all (B, T)."""
    t = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def pack(rows: Sequence[tuple[list[int], list[int]]], max_len: int, pad_id: int) -> dict[str, Tensor]:
    """Pack rows into as few rows of max_len as best-fit-decreasing finds (TRL's "bfd" strategy).

    Returns input_ids, labels, position_ids (restarting at 0 for each example), segment_ids (1, 2, ... per example
    in a row, 0 on padding) and attention_mask, all (B, max_len). The first label of each example is IGNORE (it
    would be predicted from the previous example's last token). Attention must be block-diagonal: see
    `segment_mask`.
    """
    too_long = [len(ids) for ids, _ in rows if len(ids) > max_len]
    if too_long:
        raise ConfigError(f"an example of {max(too_long)} tokens does not fit max_len={max_len}: truncate first")
    bins: list[list[int]] = []  # example indices per packed row
    space: list[int] = []
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
        n = len(rows[i][0])
        fits = [b for b in range(len(bins)) if space[b] >= n]
        if fits:
            b = min(fits, key=lambda b: space[b])  # the fullest row it fits in
            bins[b].append(i)
            space[b] -= n
        else:
            bins.append([i])
            space.append(max_len - n)
    out = {k: torch.zeros((len(bins), max_len), dtype=torch.long)
           for k in ("input_ids", "labels", "position_ids", "segment_ids", "attention_mask")}
    out["input_ids"].fill_(pad_id)
    out["labels"].fill_(IGNORE)
    for r, members in enumerate(bins):
        pos = 0
        for s, i in enumerate(members, 1):
            ids, lab = rows[i]
            n = len(ids)
            out["input_ids"][r, pos: pos + n] = torch.tensor(ids)
            out["labels"][r, pos: pos + n] = torch.tensor([IGNORE] + list(lab[1:]))
            out["position_ids"][r, pos: pos + n] = torch.arange(n)
            out["segment_ids"][r, pos: pos + n] = s
            pos += n
        out["attention_mask"][r, :pos] = 1
    return out


def segment_mask(segment_ids: Tensor) -> Tensor:
    """(B, T) segment ids -> (B, 1, T, T) bool, True = may attend: causal and within the same non-zero segment."""
    t = segment_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, Tq, Tk)
    return (causal & same & (segment_ids[:, None, :] > 0))[:, None]


# ------------------------------------------------------------------------------------------------------------ loss
def sft_loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the batch's trained tokens: logits at t score labels at t + 1.

    A batch with no trained token gives 0 (TRL clamps the count to 1 the same way).
    """
    kwargs = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch.get("position_ids"), **kwargs)  # (B, T, V)
    logits, targets = logits[:, :-1].float(), batch["labels"][:, 1:].to(logits.device)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                  ignore_index=IGNORE, reduction="sum")
    return per_token / (targets != IGNORE).sum().clamp(min=1)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                  batch_size: int = 16) -> float:
    """The token-weighted mean SFT loss over rows (every trained token counts once)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i: i + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(sft_loss(model, batch)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------------- training
@dataclass
class SFTResult:
    out_dir: str
    steps: int
    losses: list[float]
    val_loss_before: float | None
    val_loss_after: float | None
    train_examples: int
    val_examples: int
    skipped: int  # records that failed validation (on_error="skip")
    dropped: int  # examples left with no trained token after truncation to max_len
    trainable_params: int
    total_params: int
    seconds: float
    lora: bool
    accuracy_before: dict | None = None
    accuracy_after: dict | None = None
    skipped_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _tokenize_all(examples: Sequence[Mapping], tokenizer, template: ChatTemplate, max_len: int
                  ) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(rows with at least one trained token, how many examples truncation left with none)."""
    rows = [tokenize_chat(ex["messages"], tokenizer, template, max_len) for ex in examples]
    kept = [r for r in rows if any(lab != IGNORE for lab in r[1][1:])]
    return kept, len(rows) - len(kept)


@dataclass
class ChatModel:
    """A model directory opened for post-training: the model and what its chats are tokenized with."""

    model: torch.nn.Module
    tokenizer: Any
    template: ChatTemplate
    pad_id: int
    max_len: int  # sequences are cut to this (the model's context at most)


def load_chat_model(model_dir: str | Path, max_len: int | None = None) -> ChatModel:
    """Model, tokenizer (found beside it), chat template, pad id and the length cap: every trainer's first step."""
    from llmlab.model.io import load_model
    from llmlab.tokenizer import find_tokenizer

    model = load_model(model_dir)
    tokenizer = find_tokenizer(model_dir, model.cfg.vocab_size)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    return ChatModel(model, tokenizer, load_chat_template(model_dir), pad_id,
                     min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len))


def train_sft(model_dir: str | Path, data: str | Path | Sequence[Mapping], out_dir: str | Path, *, steps: int = 200,
              lr: float = 1e-3, batch_size: int = 8, lora: bool = False, lora_r: int = 8, lora_alpha: float = 16,
              lora_targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"), val_data=None,
              max_len: int | None = None, warmup_steps: int | None = None, weight_decay: float = 0.0,
              grad_clip: float = 1.0, seed: int = 0, on_error: str = "raise", packing: bool = False,
              accuracy_examples: int = 0, max_new_tokens: int = 24, device: str = "cpu",
              log=None) -> SFTResult:
    """Fine-tune MODEL (run dir or HF dir) on chat `data` (a messages JSONL, a set directory from `llmlab data sft`,
    an HF dataset, or a list of records); write OUT (model_config.json, model.safetensors, tokenizer/,
    metrics.json) and return the metrics.

    Validation data: val_data, else the set directory's val.jsonl. LoRA adapters are merged into the saved weights.
    AdamW (betas 0.9, 0.95), linear warmup then cosine decay to lr/10, gradient clipping at grad_clip.
    accuracy_examples > 0 also greedy-decodes that many graded validation examples before and after.
    """
    from llmlab.model.io import save_model
    from llmlab.posttrain.lora import apply_lora, merge_lora
    from llmlab.train.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
    from llmlab.train.schedules import lr_at, set_lr

    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    start_time = time.perf_counter()
    torch.manual_seed(seed)
    cm = load_chat_model(model_dir, max_len)
    model, tokenizer, template, pad_id, max_len = cm.model, cm.tokenizer, cm.template, cm.pad_id, cm.max_len

    train, val = train_and_val(data, val_data, "sft", on_error)
    train_rows, dropped = _tokenize_all(train.examples, tokenizer, template, max_len)
    val_rows, _ = _tokenize_all(val.examples, tokenizer, template, max_len)
    if not train_rows:
        raise LlmlabError(f"no training example has an assistant token within max_len={max_len}")

    dev = resolve_device(device)
    model.to(dev)
    graded = [ex for ex in val.examples if ex.get("meta", {}).get("task") in GRADED][:accuracy_examples]
    acc_before = _accuracy(model, tokenizer, template, graded, max_new_tokens) if graded else None
    val_before = evaluate_loss(model, val_rows, pad_id) if val_rows else None
    if lora:
        apply_lora(model, list(lora_targets), r=lora_r, alpha=lora_alpha)
    model.train()
    opt = AdamW(param_groups_for_weight_decay(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    params = [p for p in model.parameters() if p.requires_grad]
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        rows = []
        while len(rows) < batch_size:  # epochs of a seeded shuffle, without replacement inside an epoch
            if not order:
                order = list(range(len(train_rows)))
                rng.shuffle(order)
            rows.append(train_rows[order.pop()])
        batch = pack(rows, max_len, pad_id) if packing else collate(rows, pad_id)
        loss = sft_loss(model, {k: v.to(dev) for k, v in batch.items()})
        loss.backward()
        if grad_clip:
            clip_grad_norm_(params, grad_clip)
        set_lr(opt, lr_at(step, kind="cosine", max_lr=lr, total_steps=steps, warmup_steps=min(warmup, steps - 1),
                          min_lr=lr / 10))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    model.eval()
    if lora:
        merge_lora(model)
    val_after = evaluate_loss(model, val_rows, pad_id) if val_rows else None
    acc_after = _accuracy(model, tokenizer, template, graded, max_new_tokens) if graded else None

    out = Path(out_dir)
    save_model(model.cpu(), out)
    tokenizer.save(out / "tokenizer")
    if template.source is not None:  # an HF model's own chat template goes with it
        (out / "tokenizer" / "chat_template.jinja").write_text(template.source, encoding="utf-8")
    result = SFTResult(str(out), steps, losses, val_before, val_after, len(train_rows), len(val_rows),
                       len(train.skipped) + len(val.skipped), dropped,
                       sum(p.numel() for p in params), model.num_parameters(), time.perf_counter() - start_time,
                       lora, acc_before, acc_after, train.skipped + val.skipped)
    (out / "sft_metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# -------------------------------------------------------------------------------------------------------- evaluating
def _accuracy(model: Transformer, tokenizer, template: ChatTemplate, examples: Sequence[Mapping],
              max_new_tokens: int, batch_size: int = 16) -> dict:
    from llmlab.infer.generate import generate

    stop_ids = template.stop_token_ids(tokenizer)
    stop_text = [eot for eot in END_OF_TURN if eot in tokenizer.special_tokens] or [END_OF_TURN[0]]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    device = next(model.parameters()).device
    correct, per_task, samples = 0, {}, []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        prompts = [tokenizer.encode(template.render(ex["messages"][:-1], add_generation_prompt=True),
                                    allowed_special="all")[-(model.cfg.max_seq_len - max_new_tokens):]
                   for ex in chunk]
        t = max(map(len, prompts))
        ids = torch.tensor([[pad] * (t - len(p)) + p for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = generate(model, ids, max_new_tokens, temperature=0.0, attention_mask=mask, eos_token_id=stop_ids,
                       pad_token_id=pad, stop_strings=tuple(template.stop_strings(tokenizer)),
                       decode=tokenizer.decode)
        for ex, row in zip(chunk, out[:, t:].tolist(), strict=True):
            text = tokenizer.decode(row)
            cut = min((text.find(s) for s in stop_text if s in text), default=len(text))
            answer = text[:cut].strip()
            ok = grade(ex, answer)
            correct += ok
            task = ex["meta"]["task"]
            hits, n = per_task.get(task, (0, 0))
            per_task[task] = (hits + ok, n + 1)
            if len(samples) < 5:
                samples.append({"prompt": ex["messages"][-2]["content"], "answer": answer, "correct": ok})
    n = len(examples)
    return {"accuracy": correct / n if n else math.nan, "n": n,
            "per_task": {t: hits / cnt for t, (hits, cnt) in sorted(per_task.items())}, "samples": samples}


def held_out_accuracy(model_dir: str | Path, examples: Sequence[Mapping], max_new_tokens: int = 24,
                      device: str = "cpu") -> dict:
    """Greedy-decode the graded examples' prompts with MODEL and `grade` each answer (text before the end of
    turn): {"accuracy", "n", "per_task", "samples"}. Chit-chat and records without meta are left out."""
    cm = load_chat_model(model_dir)
    cm.model.to(resolve_device(device))
    return chat_accuracy(cm, examples, max_new_tokens)


def chat_accuracy(cm: ChatModel, examples: Sequence[Mapping], max_new_tokens: int = 24) -> dict:
    """held_out_accuracy for a chat model already loaded (on its device)."""
    graded = [ex for ex in examples if ex.get("meta", {}).get("task") in GRADED]
    return _accuracy(cm.model, cm.tokenizer, cm.template, graded, max_new_tokens)
