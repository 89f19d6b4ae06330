"""Weight quantization from scratch: int8 (absmax, min-max, LLM.int8), group-wise RTN, GPTQ, AWQ and NF4, applied to a
whole model by quantize_model."""
