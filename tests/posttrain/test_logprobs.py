import torch
from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

from llmlab.posttrain import completion_logprobs, sequence_logprobs, token_logprobs
from tests.posttrain.trl_stub import tiny_llama


def test_token_logprobs_equals_trl_selective_log_softmax():
    """Reference: trl.trainer.utils.selective_log_softmax, TRL 1.16; fp32 and bf16, torch.testing defaults."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50) * 4
    labels = torch.randint(0, 50, (3, 7))
    torch.testing.assert_close(token_logprobs(logits, labels), selective_log_softmax(logits, labels))
    ours = token_logprobs(logits.bfloat16(), labels)
    torch.testing.assert_close(ours, selective_log_softmax(logits.bfloat16(), labels).float(), rtol=1.6e-2, atol=1e-2)


def test_completion_logprobs_equal_trl_fused_lm_head():
    """Reference: TRL 1.16 `add_fused_lm_head` (what DPO/KTO/GRPO trainers score with): model(..., labels with -100
    off-completion, fused_lm_head=True).log_probs on a tiny Llama; fp32 rtol 1.3e-6 / atol 1e-5."""
    model = tiny_llama(0)
    add_fused_lm_head(model)
    torch.manual_seed(1)
    input_ids = torch.randint(0, 97, (3, 9))
    completion_mask = torch.zeros(3, 9, dtype=torch.long)
    completion_mask[0, 4:] = 1
    completion_mask[1, 2:6] = 1  # right padding after the completion
    completion_mask[2, 8:] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        trl = model(input_ids=input_ids, labels=input_ids.masked_fill(completion_mask == 0, -100),
                    fused_lm_head=True).log_probs
    ours = completion_logprobs(logits, input_ids, completion_mask)
    torch.testing.assert_close(ours, trl)
    torch.testing.assert_close(sequence_logprobs(logits, input_ids, completion_mask), trl.sum(-1))
    torch.testing.assert_close(sequence_logprobs(logits, input_ids, completion_mask, average=True),
                               trl.sum(-1) / torch.tensor([5.0, 4.0, 1.0]))
