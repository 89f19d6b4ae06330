"""Training: the optimizer, LR schedules, gradient clipping, and the pretraining loop built on them."""

from llmlab.train.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
from llmlab.train.schedules import lr_at, set_lr

__all__ = ["AdamW", "clip_grad_norm_", "lr_at", "param_groups_for_weight_decay", "set_lr"]
