"""llmlab.model.hf.checkpoint.export_hf against transformers 5.24: the exported directory is a whole checkpoint.
AutoTokenizer opens it with our ids, apply_chat_template renders our ChatML text exactly, GenerationConfig holds
our stop tokens, and HF's greedy generate stops where llmlab's does (token-exact)."""

from __future__ import annotations

import json

import pytest
import torch

import llmlab
from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import ChatTemplate, render
from llmlab.infer.generate import generate
from llmlab.model.config import TransformerConfig
from llmlab.model.hf.checkpoint import CHATML_JINJA, export_hf
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import ByteTokenizer, load_tokenizer, sequence_start_id, train_tokenizer
from tests.model.hf_helpers import randomise_

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

TEXT = "The quick brown fox jumps over the lazy dog. 床前明月光，疑是地上霜。 " * 20
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 中文?"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                {"type": "text", "text": "b"}]}]
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "max_seq_len": 64,
         "tie_embeddings": False}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An llmlab run dir as pretrain/sft write it: model + tokenizer/ (a trained BPE with the ChatML tokens)."""
    out = tmp_path_factory.mktemp("run")
    tok = train_tokenizer(TEXT, 320)
    model = randomise_(Transformer(TransformerConfig(vocab_size=tok.vocab_size, **SMALL)))
    llmlab.save_model(model, out)
    tok.save(out / "tokenizer")
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_hf(run_dir, tmp_path_factory.mktemp("hf") / "out")


def test_files_and_model_type(exported):
    assert exported.model_type == "llama" and exported.auto_class == "AutoModelForCausalLM"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json"} <= set(exported.files)


def test_autotokenizer_gives_our_ids(run_dir, exported):
    """Reference: transformers.AutoTokenizer.from_pretrained(export): the same ids as our tokenizer (specials
    included) and the same eos/pad ids."""
    ours = load_tokenizer(run_dir / "tokenizer")
    hf = tf.AutoTokenizer.from_pretrained(exported.out_dir)
    text = TEXT[:200] + "<|im_start|>user\nhi<|im_end|>"
    assert hf.encode(text, add_special_tokens=False) == ours.encode(text, allowed_special="all")
    assert (hf.eos_token_id, hf.pad_token_id) == (ours.eos_id, ours.pad_id)


def test_apply_chat_template_equals_chatml(exported):
    """Reference: transformers' apply_chat_template with the exported chat_template.jinja renders exactly
    llmlab's ChatML (infer.chat_template.render), with and without the generation prompt; our Jinja engine too."""
    hf = tf.AutoTokenizer.from_pretrained(exported.out_dir)
    for gen in (True, False):
        want = render(CHAT, add_generation_prompt=gen)
        assert hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen) == want
        assert ChatTemplate(CHATML_JINJA).render(CHAT, add_generation_prompt=gen) == want


def test_hf_generate_stops_at_our_stop_tokens(run_dir, exported):
    """Reference: HF greedy generate with the exported generation_config: token-exact equal to llmlab's greedy
    generate with the chat template's stop tokens (end of turn and eos), which it lists as eos_token_id."""
    ours_tok = load_tokenizer(run_dir / "tokenizer")
    stops = ChatTemplate().stop_token_ids(ours_tok)
    gen = json.loads((exported.out_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == stops and gen["pad_token_id"] == ours_tok.pad_id
    assert gen["bos_token_id"] == ours_tok.eos_id  # the sequence start of an llmlab run: documents follow eos
    assert sequence_start_id(exported.out_dir, ours_tok) == sequence_start_id(run_dir, ours_tok) == ours_tok.eos_id
    hf_model = tf.AutoModelForCausalLM.from_pretrained(exported.out_dir).eval()
    ours = llmlab.load_model(run_dir)
    ids = torch.tensor([ours_tok.encode(render(CHAT[:2]), allowed_special="all")])
    with torch.no_grad():
        # swap the output rows of the 4th greedy token and the first stop token in both models: greedy decoding
        # now emits the stop token there, so stopping is exercised
        fourth = int(generate(ours, ids, 4, temperature=0.0)[0, -1])
        assert fourth not in stops
        for head in (ours.lm_head.weight, hf_model.lm_head.weight):
            head[[fourth, stops[0]]] = head[[stops[0], fourth]].clone()
        want = generate(ours, ids, 20, temperature=0.0, eos_token_id=stops, pad_token_id=ours_tok.pad_id)
        got = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    assert got.tolist() == want.tolist()
    assert want.shape[1] <= ids.shape[1] + 4 and int(want[0, -1]) in stops


def test_export_of_an_export_copies_the_tokenizer_files_verbatim(exported, tmp_path):
    again = export_hf(exported.out_dir, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (again.out_dir / name).read_bytes() == (exported.out_dir / name).read_bytes(), name


def test_byte_vocab_model_gets_the_byte_tokenizer(tmp_path):
    """A run without tokenizer/ whose vocabulary is the byte tokenizer's: AutoTokenizer opens the written byte
    tokenizer with the same ids; it has no ChatML tokens, so no chat template is written."""
    byte = ByteTokenizer()
    llmlab.save_model(Transformer(TransformerConfig(vocab_size=byte.vocab_size, **SMALL)), tmp_path / "run")
    done = export_hf(tmp_path / "run", tmp_path / "hf")
    hf = tf.AutoTokenizer.from_pretrained(done.out_dir)
    assert hf.encode(TEXT[:100], add_special_tokens=False) == byte.encode(TEXT[:100])
    assert "chat_template.jinja" not in done.files


def test_no_tokenizer_exports_weights_only(tmp_path):
    llmlab.save_model(Transformer(TransformerConfig(vocab_size=97, **SMALL)), tmp_path / "run")
    done = export_hf(tmp_path / "run", tmp_path / "hf")
    assert "tokenizer.json" not in done.files and "model.safetensors" in done.files


def test_out_must_not_be_the_model_dir(run_dir):
    with pytest.raises(LlmlabError, match="model directory itself"):
        export_hf(run_dir, run_dir)
