"""Prefix tuning against PEFT 0.21 (`PrefixTuningConfig`, task CAUSAL_LM) on random-weight HF Llama (GQA) and GPT-2
(transformers 5.24, eager attention), fp32.

Reference: `peft.get_peft_model(hf, PrefixTuningConfig(...))`'s forward and gradients, and `PeftModel.from_pretrained`
for the file format; ours is `llmlab.load_model` of the same HF checkpoint with PEFT's prefix (or embedding + MLP)
copied in. Tolerance: logits atol 1e-5 (rtol 0; measured <= 1.3e-6), gradients atol 1e-5 / rtol 1e-4.
Generation is compared with PEFT's forward, not PEFT's generate: with transformers 5.24, PEFT 0.21's generate runs the
prefill without the prefix (its keys are missing from the attention mask and cache), so it disagrees with its own
forward.
"""

from __future__ import annotations

import pytest
import torch

import llmlab
from llmlab.errors import LlmlabError
from llmlab.infer.generate import generate
from llmlab.model.presets import preset
from llmlab.posttrain.prefix_tuning import PrefixTuning, load_prefix, save_prefix
from llmlab.posttrain.sft import IGNORE, sft_loss
from tests.model.hf_helpers import V, batch, randomise_

P = 3  # virtual tokens
ATOL = 1e-5


def build_hf(family: str):
    import transformers as tf

    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "llama":  # GQA: 4 query heads, 2 K/V heads, so the prefix has Hkv = 2 heads per layer
        model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                   attn_implementation="eager"))
    else:  # learned positions: the real tokens' positions P .. P+T-1 index the table
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                 attn_implementation="eager"))
    return randomise_(model)


def peft_and_ours(family: str, tmp_path, projection: bool = False):
    """(PEFT model, ours) with the same base weights and the same prefix parameters."""
    from peft import PrefixTuningConfig, get_peft_model

    hf = build_hf(family)
    hf.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft = get_peft_model(hf, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                 prefix_projection=projection, encoder_hidden_size=24)).eval()
    ours = PrefixTuning(llmlab.load_model(tmp_path / "base"), P, prefix_projection=projection,
                        encoder_hidden_size=24).eval()
    enc = peft.prompt_encoder["default"]
    with torch.no_grad():
        if projection:
            ours.embedding.copy_(enc.embedding.weight)
            ours.mlp[0].load_state_dict(enc.transform[0].state_dict())
            ours.mlp[2].load_state_dict(enc.transform[2].state_dict())
        else:
            ours.prefix.copy_(enc.embedding.weight)
    return peft, ours


CASES = [("llama", False), ("llama", True), ("gpt2", False), ("gpt2", True)]


@pytest.mark.parametrize(("family", "projection"), CASES)
def test_logits_equal_peft_on_padded_batches(family, projection, tmp_path):
    """Right and left padding, with and without explicit position_ids (PEFT shifts them by P): every position's
    logits within 1e-5 of PeftModel's; the prefix changes the output (so the comparison proves something)."""
    peft, ours = peft_and_ours(family, tmp_path, projection)
    for padding in ("right", "left", "left-pos"):
        ids, mask, pos = batch(padding)
        with torch.no_grad():
            ref = peft(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            got = ours(ids, attention_mask=mask, position_ids=pos)
            plain = ours.base(ids, attention_mask=mask, position_ids=pos)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        assert (got - plain)[mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize(("family", "projection"), [("llama", False), ("llama", True), ("gpt2", False)])
def test_gradients_equal_peft_and_reach_only_the_prefix(family, projection, tmp_path):
    """The same loss on both: gradients of the prefix (or embedding and MLP) equal PEFT's; the base gets none."""
    peft, ours = peft_and_ours(family, tmp_path, projection)
    ids, mask, _ = batch("left")
    weights = torch.linspace(-1, 1, V)  # a loss that depends on every logit
    (peft(input_ids=ids, attention_mask=mask).logits * weights).sum().backward()
    (ours(ids, attention_mask=mask) * weights).sum().backward()
    with_grad = {n for n, p in ours.named_parameters() if p.grad is not None}
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    expected = {"embedding", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"} if projection else {"prefix"}
    assert with_grad == trainable == expected
    enc = peft.prompt_encoder["default"]
    pairs = ([(ours.embedding, enc.embedding.weight), (ours.mlp[0].weight, enc.transform[0].weight),
              (ours.mlp[2].bias, enc.transform[2].bias)] if projection else [(ours.prefix, enc.embedding.weight)])
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("projection", [False, True])
def test_save_opens_in_peft_and_loads_back(projection, tmp_path):
    """save_prefix -> `PeftModel.from_pretrained(hf, dir)`: logits 1e-5 (with the MLP, the file holds its output);
    load_prefix of our files and of PEFT's own save_pretrained give the same logits."""
    import transformers as tf
    from peft import PeftModel

    peft, ours = peft_and_ours("llama", tmp_path, projection)
    ids, mask, _ = batch("left")
    with torch.no_grad():
        ref = ours(ids, attention_mask=mask)
    save_prefix(ours, tmp_path / "ours")
    peft.save_pretrained(tmp_path / "theirs")
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    opened = PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(opened(input_ids=ids, attention_mask=mask).logits, ref, atol=ATOL, rtol=0)
        for adapter in ("ours", "theirs"):
            back = load_prefix(llmlab.load_model(tmp_path / "base"), tmp_path / adapter).eval()
            torch.testing.assert_close(back(ids, attention_mask=mask), ref, atol=ATOL, rtol=0)


def test_load_rejects_a_mismatched_adapter(tmp_path):
    _, ours = peft_and_ours("llama", tmp_path)
    save_prefix(ours, tmp_path / "adapter")
    other = llmlab.Transformer(preset("tiny", vocab_size=V, n_layers=3))
    with pytest.raises(LlmlabError, match="num_layers"):
        load_prefix(other, tmp_path / "adapter")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_follows_peft_forward(family, tmp_path):
    """llmlab's KV-cached greedy `generate` on the prefix model (left padding): each new token is the argmax of
    PEFT's forward over the sequence so far (positions counted from each row's first real token)."""
    peft, ours = peft_and_ours(family, tmp_path)
    ids, mask, _ = batch("left")
    ids, mask = ids[:, :8], mask[:, :8]  # rows with 0, 3 and 7 left pads
    n_new = 6
    out = generate(ours, ids, n_new, temperature=0.0, attention_mask=mask, pad_token_id=0)
    full_mask = torch.cat([mask, torch.ones(3, n_new, dtype=torch.long)], dim=1)
    with torch.no_grad():
        ref = peft(input_ids=out, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))
    assert torch.equal(ref.logits[:, 7:-1].argmax(-1), out[:, 8:])


def test_training_moves_only_the_prefix(tmp_path):
    """A few AdamW steps of `sft_loss` (the SFT trainer's loss) lower the loss; the base weights do not change."""
    _, ours = peft_and_ours("llama", tmp_path)
    before = {n: p.clone() for n, p in ours.base.named_parameters()}
    ids, mask, _ = batch("right")
    data = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)}
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=0.05)
    ours.train()
    losses = []
    for _ in range(15):
        loss = sft_loss(ours, data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(torch.equal(p, before[n]) for n, p in ours.base.named_parameters())
    assert ours.num_parameters() == ours.base.num_parameters() + P * 2 * 2 * 2 * 8  # P x L x (K, V) x Hkv x D
    with pytest.raises(LlmlabError, match="packed"):
        ours(ids, segment_ids=torch.ones_like(ids))
