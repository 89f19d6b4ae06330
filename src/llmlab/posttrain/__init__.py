"""Post-training: log-probs, LoRA/DoRA adapters, reward model, preference losses (DPO family), PPO and GRPO losses."""

from llmlab.posttrain.chat_data import grade, load_chat_data, make_pref_set, make_sft_set
from llmlab.posttrain.dpo import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_odds_ratio_loss,
    robust_dpo_loss,
    simpo_loss,
)
from llmlab.posttrain.grpo import group_advantages, grpo_loss, k3_kl
from llmlab.posttrain.logprobs import completion_logprobs, sequence_logprobs, token_logprobs
from llmlab.posttrain.lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from llmlab.posttrain.ppo import gae, kl_penalized_rewards, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from llmlab.posttrain.reward import RewardModel, bradley_terry_loss, pairwise_accuracy
from llmlab.posttrain.sft import held_out_accuracy, sft_loss, tokenize_chat, train_sft
from llmlab.posttrain.train_dpo import train_dpo
from llmlab.posttrain.train_grpo import train_grpo
from llmlab.posttrain.train_ppo import PPOConfig, train_ppo
from llmlab.posttrain.train_reward import load_reward_model, train_reward_model

__all__ = [
    "LoRALinear",
    "PPOConfig",
    "RewardModel",
    "apply_lora",
    "bradley_terry_loss",
    "completion_logprobs",
    "dpo_loss",
    "gae",
    "grade",
    "group_advantages",
    "grpo_loss",
    "held_out_accuracy",
    "hinge_loss",
    "ipo_loss",
    "k3_kl",
    "kl_penalized_rewards",
    "kto_kl_estimate",
    "kto_loss",
    "load_adapter",
    "load_chat_data",
    "load_reward_model",
    "make_pref_set",
    "make_sft_set",
    "masked_mean",
    "masked_whiten",
    "merge_lora",
    "orpo_odds_ratio_loss",
    "pairwise_accuracy",
    "ppo_policy_loss",
    "ppo_value_loss",
    "robust_dpo_loss",
    "save_adapter",
    "sequence_logprobs",
    "sft_loss",
    "simpo_loss",
    "token_logprobs",
    "tokenize_chat",
    "train_dpo",
    "train_grpo",
    "train_ppo",
    "train_reward_model",
    "train_sft",
]
