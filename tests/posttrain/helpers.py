"""Shared by the post-training loop tests: a tiny model SFT'd on single-digit addition, built once."""

from __future__ import annotations

import functools
import random
import tempfile
from pathlib import Path

import torch

import llmlab
from llmlab.infer.chat_template import render
from llmlab.model.config import TransformerConfig
from llmlab.posttrain.sft import train_sft
from llmlab.tokenizer import train_tokenizer

V = 300  # asked for; the addition texts run out of pairs to merge a little earlier


def addition(a: int, b: int) -> dict:
    answer = str(a + b)
    return {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": answer}], "meta": {"task": "add", "answer": answer}}


def addition_pairs(examples: list[dict], seed: int = 0) -> list[dict]:
    """chosen = the sum, rejected = the sum + 10 or + 20 (one of chat_data.corrupt's numeric corruptions): a wrong
    answer a 2-layer model can learn to tell apart on unseen prompts within a few seconds."""
    rng = random.Random(seed)
    pairs = []
    for ex in examples:
        prompt, last = ex["messages"][:-1], ex["messages"][-1]
        wrong = str(int(last["content"]) + rng.choice((10, 20)))
        pairs.append({"prompt": prompt, "chosen": [last], "rejected": [{"role": "assistant", "content": wrong}],
                      "meta": {**ex["meta"], "rejected": wrong}})
    return pairs


@functools.cache
def tiny_sft_model() -> tuple[Path, list[dict], list[dict]]:
    """A 2-layer model with a 300-token BPE, briefly SFT'd on a + b for digits a, b; built once per test session.
    Returns (run dir, train examples, held-out examples)."""
    examples = [addition(a, b) for a in range(10) for b in range(10)]
    random.Random(0).shuffle(examples)
    train, val = examples[:80], examples[80:]
    root = Path(tempfile.mkdtemp(prefix="llmlab-posttrain-"))
    tok = train_tokenizer([render(ex["messages"], add_generation_prompt=False) for ex in examples], V)
    torch.manual_seed(0)
    model = llmlab.Transformer(TransformerConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                                 max_seq_len=64))
    llmlab.save_model(model, root / "base")
    tok.save(root / "base" / "tokenizer")
    train_sft(root / "base", train, root / "sft", steps=60, lr=3e-3, batch_size=16)
    return root / "sft", train, val
