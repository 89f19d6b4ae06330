"""llmlab: every LLM technique from scratch, proven equal to the reference."""

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import RopeScaling, TransformerConfig
from llmlab.model.io import build_model, load_model, save_model
from llmlab.model.seq2seq import EncoderDecoder
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import load_tokenizer

__all__ = ["ConfigError", "EncoderDecoder", "LlmlabError", "RopeScaling", "Transformer", "TransformerConfig",
           "build_model", "load_model", "load_tokenizer", "save_model"]
__version__ = "0.1.0"
