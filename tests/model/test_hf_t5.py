"""T5 against HF transformers 5.24 `T5ForConditionalGeneration` (random weights, eager attention): import, export,
round trip, loss with labels, greedy generation, parameter count, and the relative position buckets.

Tiny configs use 8 buckets with max_distance 8, so 12-token inputs reach the exact, the log-spaced and the
clamped buckets; d_kv * num_heads != d_model and num_decoder_layers != num_layers check the shapes.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.infer.seq2seq_generate import generate_seq2seq  # noqa: E402
from llmlab.model.config import TransformerConfig  # noqa: E402
from llmlab.model.flops import count_params  # noqa: E402
from llmlab.model.hf import family_for, hf_model_type, load_hf_model, save_hf_model  # noqa: E402
from llmlab.model.positions import t5_relative_bucket  # noqa: E402
from llmlab.model.seq2seq import EncoderDecoder, shift_right  # noqa: E402
from tests.model.hf_helpers import V, assert_round_trip, batch, randomise_  # noqa: E402

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32
T_DEC = 7
SMALL = {"vocab_size": V, "d_model": 32, "d_kv": 16, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 3,
         "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 8,
         "decoder_start_token_id": 0, "attn_implementation": "eager"}


def _t5(untie: bool = False, **kw) -> torch.nn.Module:
    """HF 5.24 ties lm_head to shared whatever tie_word_embeddings says (that flag only sets the output scaling):
    untie=True gives the head its own weights, as a v1.1 / Flan-T5 checkpoint has."""
    model = tf.T5ForConditionalGeneration(tf.T5Config(**{**SMALL, **kw}))
    if untie:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return randomise_(model)


# name -> (HF model, whether its head is tied in llmlab's import)
CASES = {
    "v1.0-relu-tied": (lambda: _t5(feed_forward_proj="relu"), True),  # t5-small: tied, output scaled
    "v1.1-gated-gelu-untied": (lambda: _t5(untie=True, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                               False),  # flan-t5: untied, unscaled
    # tie_word_embeddings=False in 5.24 without a separate head: tied weights, no scaling
    "gated-silu-tied-unscaled": (lambda: _t5(feed_forward_proj="gated-silu", tie_word_embeddings=False), True),
    # encoder and decoder of equal depth: HF 5.24's generate can use its KV cache (see the generate test)
    "v1.1-equal-depth": (lambda: _t5(untie=True, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                     num_decoder_layers=2), False),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model, its save_pretrained dir), built once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            model = CASES[name][0]()
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            made[name] = model, path
        return made[name]

    return get


def seq2seq_batch() -> tuple[torch.Tensor, ...]:
    """Encoder ids and mask (3, 12), right padded (0, 3, 7 pads); decoder ids and mask (3, 7), right padded
    (0, 2, 4 pads); labels = decoder ids with -100 on the pads."""
    ids, mask, _ = batch("right")
    dec = torch.randint(0, V, (3, T_DEC), generator=torch.Generator().manual_seed(2))
    dec_mask = torch.ones(3, T_DEC, dtype=torch.long)
    dec_mask[1, T_DEC - 2:] = 0
    dec_mask[2, T_DEC - 4:] = 0
    return ids, mask, dec, dec_mask, dec.masked_fill(dec_mask == 0, -100)


def assert_same_logits(ours: EncoderDecoder, hf_model) -> None:
    ids, mask, dec, dec_mask, _ = seq2seq_batch()
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                       decoder_attention_mask=dec_mask).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    real = dec_mask.bool()
    torch.testing.assert_close(got[real], ref[real], **TOL)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 8), (7, 20), (4, 3)])
def test_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    """t5_relative_bucket vs HF `T5Attention._relative_position_bucket` on every offset in [-300, 300]: exact."""
    rel = torch.arange(-300, 301)[None, :] - torch.arange(3)[:, None]  # (3, 601)
    want = tf.models.t5.modeling_t5.T5Attention._relative_position_bucket(rel, bidirectional, num_buckets,
                                                                          max_distance)
    got = t5_relative_bucket(rel, bidirectional, num_buckets, max_distance)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(CASES))
def test_import_logits_match_hf(checkpoints, name):
    """load_model(HF save_pretrained dir) -> EncoderDecoder; logits on real decoder tokens, right-padded encoder
    and decoder inputs, vs HF eager: fp32, atol = rtol = 1e-5. The head is tied exactly when HF's is."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    assert isinstance(ours, EncoderDecoder) and not ours.training
    assert ours.cfg.tie_embeddings == CASES[name][1]
    assert ours.cfg.scale_head_input == hf_model.config.scale_decoder_outputs
    assert_same_logits(ours, hf_model)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_backends_match_hf(checkpoints, backend):
    """The imported model on the naive and sdpa backends vs HF eager (flash has no learned bias: ConfigError)."""
    hf_model, path = checkpoints("v1.1-gated-gelu-untied")
    loaded = llmlab.load_model(path)
    ours = EncoderDecoder(loaded.cfg.replace(attn_backend=backend))
    ours.load_state_dict(loaded.state_dict())
    assert_same_logits(ours.eval(), hf_model)


@pytest.mark.parametrize("name", ["v1.0-relu-tied", "v1.1-gated-gelu-untied"])
def test_loss_with_labels_matches_hf(checkpoints, name):
    """model.loss(ids, labels, mask) vs HF forward(labels=...), which shifts labels right into decoder_input_ids
    (decoder_start_token_id, -100 -> pad): fp32, atol = rtol = 1e-5; shift_right equals HF's `_shift_right`."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    ids, mask, _, _, labels = seq2seq_batch()
    assert torch.equal(shift_right(labels, 0), hf_model._shift_right(labels))
    with torch.no_grad():
        want = hf_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = ours.loss(ids, labels, attention_mask=mask)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", ["v1.0-relu-tied", "v1.1-gated-gelu-untied", "v1.1-equal-depth"])
def test_greedy_generate_matches_hf(checkpoints, name):
    """generate_seq2seq (KV cache, cross K/V once) vs HF generate(do_sample=False) on a right-padded batch:
    identical tokens, the start token first; with an eos some rows reach early, finished rows padded.
    HF uses its KV cache only when num_decoder_layers <= num_layers: 5.24 sizes the decoder's cache by num_layers,
    the encoder's depth, and fails with IndexError when the decoder is deeper (3 > 2 here)."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    ids, mask, _ = batch("right")
    hf_cache = hf_model.config.num_decoder_layers <= hf_model.config.num_layers
    hf_kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                     use_cache=hf_cache)
    free = generate_seq2seq(ours, ids, mask, max_new_tokens=10)
    assert torch.equal(free, hf_model.generate(**hf_kwargs, eos_token_id=None))
    eos = int(free[1, 3])  # row 1 stops at step 3 (or earlier, where the same token comes first)
    got = generate_seq2seq(ours, ids, mask, max_new_tokens=10, eos_token_id=eos)
    want = hf_model.generate(**hf_kwargs, eos_token_id=eos)
    assert torch.equal(got, want)
    assert (got[1] == eos).any()


def _ours_t5(**kw) -> EncoderDecoder:
    cfg = TransformerConfig(arch="encoder-decoder", vocab_size=V, d_model=32, head_dim=16, d_ff=48, n_layers=2,
                            n_decoder_layers=3, n_heads=4, position="t5_relative", rel_buckets=8, rel_max_distance=8,
                            attn_scale=1.0, norm_eps=1e-6, **kw)
    return randomise_(EncoderDecoder(cfg))


EXPORTS = {
    "v1.0": dict(activation="relu", gated_mlp=False, tie_embeddings=True, scale_head_input=True),
    "v1.1": dict(activation="gelu_tanh", gated_mlp=True, tie_embeddings=False),
    "tied-unscaled-silu": dict(activation="silu", gated_mlp=True, tie_embeddings=True),
    "untied-scaled-gelu": dict(activation="gelu", gated_mlp=False, scale_head_input=True, decoder_start_token_id=3),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            model = _ours_t5(**EXPORTS[name])
            made[name] = model, save_hf_model(model, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_loads_in_hf_with_same_logits(exported, name):
    """AutoModelForSeq2SeqLM.from_pretrained(save_hf_model(ours)): model_type t5, no missing/unexpected/mismatched
    keys, logits equal to ours on real decoder tokens, atol = rtol = 1e-5."""
    ours, path = exported(name)
    assert hf_model_type(ours.cfg) == "t5"
    hf_model, info = tf.AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True,
                                                              attn_implementation="eager")
    assert isinstance(hf_model, tf.T5ForConditionalGeneration)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert (hf_model.lm_head.weight is hf_model.shared.weight) == ours.cfg.tie_embeddings
    assert_same_logits(ours, hf_model.eval())


@pytest.mark.parametrize("name", list(EXPORTS))
def test_round_trip_is_identity(exported, name):
    """load_hf_model(save_hf_model(model)): the same config and bit-identical state (torch.equal)."""
    assert_round_trip(*exported(name))


def test_hf_resave_keeps_the_function(exported, tmp_path):
    """HF's own save_pretrained of our untied export (tie_word_embeddings rewritten to true) loads back untied and
    unscaled, equal to ours: the weights, not config.json, decide the tying. Logits atol = rtol = 1e-5."""
    ours, path = exported("v1.1")
    tf.T5ForConditionalGeneration.from_pretrained(path).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    back = load_hf_model(tmp_path)
    assert back.cfg == ours.cfg
    ids, mask, dec, dec_mask, _ = seq2seq_batch()
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask, dec, dec_mask), ours(ids, mask, dec, dec_mask), **TOL)


@pytest.mark.parametrize(("changes", "field"), [
    (dict(position="none"), "position"),
    (dict(attn_scale=None), "attn_scale"),
    (dict(norm="layernorm"), "norm"),
    (dict(qkv_bias=True), "qkv_bias"),
    (dict(attn_dropout=0.1), "attn_dropout"),
    (dict(activation="gelu", gated_mlp=True), "activation"),
])
def test_unexportable_seq2seq_raises_one_line(changes, field):
    """A seq2seq config t5 cannot express: family_for and hf_model_type raise a one-line LlmlabError naming the
    field (no remote-code fallback: its wrapper holds a decoder- or encoder-only Transformer)."""
    cfg = _ours_t5().cfg.replace(**changes)
    for f in (family_for, hf_model_type):
        with pytest.raises(LlmlabError, match=field) as e:
            f(cfg)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(CASES))
def test_param_count_matches_hf(checkpoints, name):
    """flops.count_params(cfg).total and EncoderDecoder.num_parameters() vs HF num_parameters(): exact."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    counts = count_params(ours.cfg)
    assert counts.total == ours.num_parameters() == hf_model.num_parameters()
    assert counts.non_embedding == ours.num_parameters(non_embedding=True)
