"""Random-weight HF Llama and GPT-2 (transformers 5.24, eager attention) and the same weights loaded into llmlab:
the reference models of the generation and beam-search comparisons."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llmlab  # noqa: E402

V = 97
N_PROMPT = 6
SEEDS = {"llama": 2, "gpt2": 0}  # weight seeds under which beams often end in the EOS below
BEAM_EOS = {"llama": 93, "gpt2": 10}  # tokens the beams generate: picked once by running the search without eos


def build_hf(name: str):
    """Llama (GQA) or GPT-2 with weights ~ N(0, 0.3^2): peaked, input-dependent next-token distributions."""
    import transformers as tf

    tf.logging.set_verbosity_error()
    if name == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attn_implementation="eager"))
    else:
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                 attn_implementation="eager"))
    g = torch.Generator().manual_seed(SEEDS[name])
    with torch.no_grad():
        for p in model.parameters():
            noise = 0.3 * torch.randn(p.shape, generator=g)
            p.copy_(noise if p.dim() > 1 else p + noise)  # norm weights stay near 1, biases near 0
    model.generation_config.eos_token_id = None  # no config default: generate stops only on the eos a test passes
    return model.eval()


def hf_and_ours(name: str, tmp_dir):
    """(HF model, llmlab model with its weights): `save_pretrained` then `llmlab.load_model`."""
    hf = build_hf(name)
    hf.save_pretrained(tmp_dir)
    return hf, llmlab.load_model(tmp_dir)


def prompts(padded: bool, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ids (batch, 6) and, when padded, a left-padding mask: row r has 2r pads (rows 0, 2, 4 pads)."""
    ids = torch.randint(0, V, (batch, N_PROMPT), generator=torch.Generator().manual_seed(1))
    if not padded:
        return ids, None
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, :2 * row] = 0
    return ids, mask
