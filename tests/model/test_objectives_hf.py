"""Causal LM and masked LM losses equal HF's own: GPT2LMHeadModel(labels=...) and BertForMaskedLM(labels=...).

HF models are built from configs with random weights, saved, and loaded into llmlab; fp32, tolerance 1e-5.
"""

import pytest
import torch

import llmlab
from llmlab.model.loss import cross_entropy, next_token_loss
from llmlab.model.objectives import mask_tokens

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()
TOL = dict(atol=1e-5, rtol=1e-5)


def test_causal_lm_loss_equals_gpt2lmheadmodel(tmp_path):
    """Reference: GPT2LMHeadModel(input_ids, labels=input_ids).loss (HF shifts labels inside)."""
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=53, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    hf.save_pretrained(tmp_path)
    ours = llmlab.load_model(tmp_path)
    x = torch.randint(0, 53, (3, 20))
    with torch.no_grad():
        ref = hf(input_ids=x, labels=x).loss
        got = next_token_loss(ours(x), x)
    torch.testing.assert_close(got, ref, **TOL)


def test_masked_lm_loss_equals_bertformaskedlm(tmp_path):
    """Reference: BertForMaskedLM(masked inputs, labels with -100 where not masked).loss."""
    torch.manual_seed(0)
    hf = tf.BertForMaskedLM(tf.BertConfig(vocab_size=53, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=32)).eval()
    hf.save_pretrained(tmp_path)
    ours = llmlab.load_model(tmp_path)
    x = torch.randint(0, 52, (4, 24))
    inputs, labels = mask_tokens(x, mask_id=52, vocab_size=53, gen=torch.Generator().manual_seed(1), rate=0.3)
    assert (labels != -100).any()
    with torch.no_grad():
        ref = hf(input_ids=inputs, labels=labels).loss
        got = cross_entropy(ours(inputs), labels)
    torch.testing.assert_close(got, ref, **TOL)
