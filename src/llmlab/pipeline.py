"""`llmlab run`: the main job, one stage after another. Later issues add stages here (tokenizer training,
data preparation, pretraining, post-training, compression, serving, evaluation); today it builds a model from a
preset, runs forward/backward passes on real text and reports what it measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmlab.data.samples import sample_text
from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.flops import count_params, flops_per_token
from llmlab.model.io import save_model
from llmlab.model.objectives import lm_loss
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.bytes import ByteTokenizer


@dataclass
class RunReport:
    cfg: TransformerConfig
    params: int
    non_embedding_params: int
    train_flops_per_token: float
    tokens_in_text: int
    initial_val_loss: float
    uniform_loss: float  # ln(vocab): what an untrained model should score
    final_val_loss: float
    step_losses: list[float] = field(default_factory=list)
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    out_dir: Path | None = None


def batches(tokens: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """Random windows of seq_len tokens: (batch, seq_len)."""
    if len(tokens) <= seq_len:
        raise LlmlabError(f"text has {len(tokens)} tokens, fewer than seq_len={seq_len}")
    starts = torch.randint(0, len(tokens) - seq_len, (batch,), generator=gen)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model: Transformer, val: torch.Tensor, batch: int, seq_len: int, mask_id: int,
             n_batches: int = 4) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(1234)  # the same validation windows (and masks) every time
    losses = []
    for _ in range(n_batches):
        x = batches(val, batch, seq_len, gen)
        losses.append(lm_loss(model, x, mask_id=mask_id, gen=gen).item())
    model.train()
    return sum(losses) / len(losses)


def run(
    size: str = "tiny",
    style: str | None = None,
    steps: int = 30,
    batch: int = 8,
    seq_len: int = 128,
    lr: float = 3e-3,
    backend: str | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress=None,
) -> RunReport:
    """Build `preset(size, style)`, take `steps` AdamW steps on the shipped sample text, report the numbers."""
    torch.manual_seed(seed)
    tok = ByteTokenizer()
    overrides = {"vocab_size": tok.vocab_size}
    if backend:
        overrides["attn_backend"] = backend
    cfg = preset(size, style, **overrides)
    if seq_len > cfg.max_seq_len:
        raise LlmlabError(f"seq_len={seq_len} exceeds the preset's max_seq_len={cfg.max_seq_len}")
    tokens = torch.tensor(tok.encode(sample_text("sonnets")), dtype=torch.long)
    split = int(0.9 * len(tokens))
    train, val = tokens[:split], tokens[split:]
    model = Transformer(cfg)
    pc = count_params(cfg)
    report = RunReport(cfg=cfg, params=model.num_parameters(), non_embedding_params=pc.non_embedding,
                       train_flops_per_token=flops_per_token(cfg, seq_len), tokens_in_text=len(tokens),
                       initial_val_loss=evaluate(model, val, batch, seq_len, tok.mask_id),
                       uniform_loss=math.log(cfg.vocab_size),
                       final_val_loss=float("nan"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x = batches(train, batch, seq_len, gen)
        loss = lm_loss(model, x, mask_id=tok.mask_id, gen=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        report.step_losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps, loss.item())
    report.step_seconds = time.perf_counter() - start
    report.tokens_per_second = steps * batch * seq_len / report.step_seconds if steps else 0.0
    report.final_val_loss = evaluate(model, val, batch, seq_len, tok.mask_id)
    if out_dir is not None:
        report.out_dir = save_model(model.eval(), out_dir)
    return report
