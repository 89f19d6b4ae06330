"""`llmlab sft`, `reward`, `dpo`, `grpo`, `ppo` and `llmlab data sft` / `llmlab data prefs`: parse options, call
llmlab.posttrain, print the result."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.errors import ConfigError, LlmlabError

console = Console()
chat_data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # plain help: "[8]" is a default


def _tasks(text: str) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] or None


def _write(kind: str, out: Path, n: int, seed: int, tasks: str, val_fraction: float) -> None:
    from llmlab.posttrain.chat_data import write_set

    manifest = write_set(out, kind, n, seed, _tasks(tasks), val_fraction)
    table = Table(title=f"{kind} set in {out} (seed {seed})")
    for name in ("split", "examples", "per task", "sha256"):
        table.add_column(name, justify="right" if name == "examples" else "left")
    for split, f in manifest["files"].items():
        table.add_row(split, f"{f['examples']:,}", ", ".join(f"{t} {c}" for t, c in f["per_task"].items()),
                      f["sha256"][:16])
    console.print(table)


@chat_data_app.command("sft", help="Write a generated chat SFT set (messages JSONL with checkable answers): "
                       "OUT/train.jsonl, OUT/val.jsonl, OUT/manifest.json.")
def data_sft(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    n: int = typer.Option(2000, "--n", help="Examples in all (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same files."),
    tasks: str = typer.Option("", "--tasks", help="Comma-separated tasks (default: all): add,sub,mul,count_letter,"
                              "count_words,upper,reverse_words,json_fields,next_line,chitchat."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out as val.jsonl."),
) -> None:
    _write("sft", out, n, seed, tasks, val_fraction)


@chat_data_app.command("prefs", help="Write a generated preference set (prompt/chosen/rejected JSONL; rejected is a "
                       "plausible wrong answer): OUT/train.jsonl, OUT/val.jsonl, OUT/manifest.json.")
def data_prefs(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    n: int = typer.Option(2000, "--n", help="Pairs in all (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same files."),
    tasks: str = typer.Option("", "--tasks", help="Comma-separated tasks (default: all)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out as val.jsonl."),
) -> None:
    _write("prefs", out, n, seed, tasks, val_fraction)


def sft(
    model: str = typer.Argument(..., help="MODEL: an llmlab run dir or an HF checkpoint dir."),
    data: str = typer.Option(..., "--data", help="messages JSONL, a set dir from `llmlab data sft` (its val.jsonl "
                             "is the validation set), a saved HF dataset or an HF dataset name."),
    out: str = typer.Option(..., "--out", help="Run directory to write (model, tokenizer/, sft_metrics.json)."),
    val: str = typer.Option(None, "--val", help="Validation data, same forms as --data."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine decay to lr/10)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step."),
    max_len: int = typer.Option(None, "--max-len", help="Tokens kept per example [the model's max_seq_len]."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (merged into the saved weights)."),
    lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", help="LoRA alpha (scale alpha/r)."),
    packing: bool = typer.Option(False, "--packing", help="Pack several examples per row (needs segment masks)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip invalid records (counted) instead of stopping."),
    accuracy: int = typer.Option(0, "--accuracy", help="Greedy-decode this many graded val examples before/after."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights' LoRA init and the batch order."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
) -> None:
    from llmlab.posttrain.sft import train_sft

    r = train_sft(model, data, out, steps=steps, lr=lr, batch_size=batch_size, lora=lora, lora_r=lora_r,
                  lora_alpha=lora_alpha, val_data=val, max_len=max_len, seed=seed,
                  on_error="skip" if skip_bad else "raise", packing=packing, accuracy_examples=accuracy,
                  device=device)
    t = Table(title=f"llmlab sft -> {r.out_dir}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("examples train / val", f"{r.train_examples:,} / {r.val_examples:,}")
    if r.skipped or r.dropped:
        t.add_row("skipped (invalid) / dropped (no assistant token in max_len)", f"{r.skipped} / {r.dropped}")
    t.add_row("trainable / total parameters", f"{r.trainable_params:,} / {r.total_params:,}" + (" (LoRA)" * r.lora))
    t.add_row("train loss (first -> last step)", f"{r.losses[0]:.4f} -> {r.losses[-1]:.4f}")
    if r.val_loss_before is not None:
        t.add_row("val loss (before -> after)", f"{r.val_loss_before:.4f} -> {r.val_loss_after:.4f}")
    if r.accuracy_before is not None:
        t.add_row(f"val accuracy, {r.accuracy_after['n']} graded (before -> after)",
                  f"{r.accuracy_before['accuracy']:.1%} -> {r.accuracy_after['accuracy']:.1%}")
    t.add_row("time", f"{r.seconds:.1f} s")
    console.print(t)
    for line in r.skipped_reasons[:5]:
        console.print(f"skipped {line}", style="yellow", markup=False, highlight=False)


# ------------------------------------------------------------------------------------ preference and RL stages
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


def _source(text: str | None, flag: str) -> str | None:
    """A data argument as given; one that names a local file or folder that is not there is an error here, before any
    model loads (otherwise it would be tried as an HF dataset name)."""
    if text is not None and not Path(text).exists() and (text.endswith(_FILE_SUFFIXES) or text.startswith((".", "/"))):
        raise LlmlabError(f"{flag} {text}: no such file or directory")
    return text


def _table(title: str) -> Table:
    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    return t


def _first_last(values: list[float], fmt: str = "{:.3f}") -> tuple[str, str]:
    """(which steps, 'start -> end'): a noisy per-step curve read at both ends, as the means of its first and last
    tenth of the steps."""
    k = max(1, len(values) // 10)
    when = "first -> last step" if k == 1 else f"mean of first {k} -> last {k} steps"
    return when, f"{fmt.format(sum(values[:k]) / k)} -> {fmt.format(sum(values[-k:]) / k)}"


def _held_out(data: str, val: str | None, n: int) -> list[dict] | None:
    """The first n held-out examples (--val, else DATA/val.jsonl) for --accuracy, or None when n <= 0."""
    from llmlab.posttrain.chat_data import train_and_val

    if n <= 0:
        return None
    _, held_out = train_and_val(data, val, "sft")
    if not held_out.examples:
        raise LlmlabError(f"--accuracy {n} needs held-out examples: pass --val, or a set dir with val.jsonl as --data")
    return held_out.examples[:n]


def _greedy_accuracy(model: str, examples: list[dict] | None) -> dict | None:
    """Greedy accuracy of MODEL on the graded ones of `examples` (None: not measured)."""
    from llmlab.posttrain.sft import held_out_accuracy

    return None if examples is None else held_out_accuracy(model, examples)


def _accuracy_row(t: Table, before: dict | None, after: dict | None) -> None:
    if before is not None and after is not None:
        t.add_row(f"held-out greedy accuracy, {after['n']} graded (before -> after)",
                  f"{before['accuracy']:.1%} -> {after['accuracy']:.1%}")


def reward(
    model: str = typer.Argument(..., help="MODEL: the base, an llmlab run dir or an HF checkpoint dir (usually the SFT "
                                "model); its LM head is replaced by a fresh scalar head."),
    data: str = typer.Option(..., "--data", help="Preference pairs: prompt/chosen/rejected JSONL, a set dir from "
                             "`llmlab data prefs` (its val.jsonl is the validation set), or an HF dataset."),
    out: str = typer.Option(..., "--out", help="Directory to write (reward_model.safetensors, tokenizer/, "
                            "reward_metrics.json)."),
    val: str = typer.Option(None, "--val", help="Validation pairs, same forms as --data."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (AdamW, constant)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Pairs per step."),
    max_len: int = typer.Option(None, "--max-len", help="Tokens kept per side [the model's max_seq_len]."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip invalid records instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Seed of the head's init and the batch order."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
) -> None:
    from llmlab.posttrain.train_reward import train_reward_model

    r = train_reward_model(model, _source(data, "--data"), out, steps=steps, lr=lr, batch_size=batch_size,
                           val_data=_source(val, "--val"), max_len=max_len, seed=seed,
                           on_error="skip" if skip_bad else "raise", device=device)
    t = _table(f"llmlab reward -> {r.out_dir}")
    t.add_row("pairs train / val", f"{r.train_pairs:,} / {r.val_pairs:,}")
    when, span = _first_last(r.losses, "{:.4f}")
    t.add_row(f"Bradley-Terry loss ({when})", span)
    if r.val_after:
        t.add_row("held-out pairwise accuracy (before -> after)",
                  f"{r.val_before['accuracy']:.1%} -> {r.val_after['accuracy']:.1%}")
        t.add_row("held-out reward margin chosen - rejected (before -> after)",
                  f"{r.val_before['margin']:+.3f} -> {r.val_after['margin']:+.3f}")
    t.add_row("time", f"{r.seconds:.1f} s")
    t.add_row("use with", f"llmlab ppo MODEL --reward-model {r.out_dir} ...")
    console.print(t)


def dpo(
    model: str = typer.Argument(..., help="MODEL: the policy to train, an llmlab run dir or an HF checkpoint dir "
                                "(usually the SFT model); a frozen copy is the reference."),
    data: str = typer.Option(..., "--data", help="Preference pairs: prompt/chosen/rejected JSONL, a set dir from "
                             "`llmlab data prefs` (its val.jsonl is the validation set), or an HF dataset."),
    out: str = typer.Option(..., "--out", help="Run directory to write (model, tokenizer/, dpo_metrics.json)."),
    val: str = typer.Option(None, "--val", help="Validation pairs, same forms as --data."),
    loss: str = typer.Option("dpo", "--loss", help="dpo (= sigmoid), robust, hinge, ipo, simpo (a reference-free "
                             "loss), orpo (reference-free: SFT NLL + beta * odds-ratio term), or kto (each pair "
                             "unpaired: chosen desirable, rejected undesirable)."),
    beta: float = typer.Option(0.1, "--beta", help="beta: the implicit reward's scale (the KL strength); for orpo "
                               "the odds-ratio term's weight lambda."),
    rpo_alpha: float = typer.Option(0.0, "--rpo-alpha", help="RPO: add this times the NLL per chosen completion "
                                    "token to a pairwise loss (dpo, robust, hinge, ipo, simpo; not orpo, which has "
                                    "one, nor kto): keeps the chosen answers likely. 0 = off."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Share of flipped labels assumed (cDPO, "
                                          "robust DPO, SimPO)."),
    simpo_gamma: float = typer.Option(0.5, "--simpo-gamma", help="SimPO's target reward margin gamma."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(5e-4, "--lr", help="Learning rate (AdamW, constant)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per step."),
    max_len: int = typer.Option(None, "--max-len", help="Tokens kept per side [the model's max_seq_len]."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip invalid records instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch order."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
) -> None:
    from llmlab.posttrain.train_dpo import LOSSES, train_dpo

    names = {"dpo": "sigmoid", **{name: name for name in LOSSES}}
    if loss not in names:
        raise ConfigError(f"--loss {loss!r} must be one of {', '.join(names)}")
    r = train_dpo(model, _source(data, "--data"), out, beta=beta, loss=names[loss], steps=steps, lr=lr,
                  batch_size=batch_size, val_data=_source(val, "--val"), label_smoothing=label_smoothing,
                  simpo_gamma=simpo_gamma, rpo_alpha=rpo_alpha, max_len=max_len, seed=seed,
                  on_error="skip" if skip_bad else "raise", device=device)
    t = _table(f"llmlab dpo --loss {loss}" + (f" --rpo-alpha {rpo_alpha:g}" if rpo_alpha else "") + f" -> {r.out_dir}")
    t.add_row("pairs train / val", f"{r.train_pairs:,} / {r.val_pairs:,}")
    t.add_row("reference forward passes (log-probs cached once)",
              "none (orpo is reference-free)" if r.loss == "orpo" else f"{r.reference_forward_calls:,}")
    when, span = _first_last(r.losses, "{:.4f}")
    t.add_row(f"loss ({when})", span)
    t.add_row(f"NLL per chosen completion token ({when})", _first_last(r.chosen_nll, "{:.4f}")[1])
    if r.val_after:
        b, a = r.val_before, r.val_after
        reward = "reward beta * mean token log-prob" if r.loss == "orpo" else "implicit reward"
        t.add_row(f"held-out {reward} chosen / rejected (after)",
                  f"{a['reward_chosen']:+.3f} / {a['reward_rejected']:+.3f}")
        t.add_row("held-out reward margin (before -> after)", f"{b['margin']:+.3f} -> {a['margin']:+.3f}")
        t.add_row("held-out preference accuracy (before -> after)", f"{b['accuracy']:.1%} -> {a['accuracy']:.1%}")
    t.add_row("time", f"{r.seconds:.1f} s")
    console.print(t)


def grpo(
    model: str = typer.Argument(..., help="MODEL: the policy to train, an llmlab run dir or an HF checkpoint dir "
                                "(usually the SFT model)."),
    data: str = typer.Option(..., "--data", help="Tasks with checkable answers: a set dir from `llmlab data sft` or "
                             "its JSONL (records with meta.task and meta.answer; others are left out)."),
    out: str = typer.Option(..., "--out", help="Run directory to write (model, tokenizer/, grpo_metrics.json, "
                            "reward_curve.png)."),
    val: str = typer.Option(None, "--val", help="Held-out tasks for --accuracy [DATA/val.jsonl]."),
    steps: int = typer.Option(50, "--steps", help="Optimizer steps (one rollout each)."),
    group_size: int = typer.Option(8, "--group-size", help="Completions sampled per prompt (G)."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step", help="Prompts per step."),
    beta: float = typer.Option(0.04, "--beta", help="k3 KL penalty to the frozen start (0 = none)."),
    clip_eps: float = typer.Option(0.2, "--clip-eps", help="Ratio clip epsilon."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate (AdamW, constant)."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Tokens sampled per completion at most."),
    num_iterations: int = typer.Option(1, "--num-iterations", help="Updates per rollout (mu)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    format_reward: float = typer.Option(0.0, "--format-reward", help="Added when a completion closes its turn."),
    loss_type: str = typer.Option("grpo", "--loss-type", help="grpo (per-sequence token mean) or dapo (batch token "
                                  "mean)."),
    accuracy: int = typer.Option(0, "--accuracy", help="Greedy-decode this many held-out tasks before/after."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt order and the sampling."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
) -> None:
    from llmlab.posttrain.train_grpo import train_grpo

    if loss_type not in ("grpo", "dapo"):
        raise ConfigError(f"--loss-type {loss_type!r} must be grpo or dapo")
    data = _source(data, "--data")
    held_out = _held_out(data, _source(val, "--val"), accuracy)
    before = _greedy_accuracy(model, held_out)
    r = train_grpo(model, data, out, group_size=group_size, prompts_per_step=prompts_per_step, beta=beta,
                   clip_eps=clip_eps, steps=steps, lr=lr, max_new_tokens=max_new_tokens, num_iterations=num_iterations,
                   temperature=temperature, format_reward=format_reward, loss_type=loss_type, seed=seed,
                   device=device)
    after = _greedy_accuracy(out, held_out)
    t = _table(f"llmlab grpo -> {r.out_dir}")
    when, span = _first_last(r.rewards)
    t.add_row(f"mean reward ({when})", span)
    t.add_row(f"sampled accuracy ({when})", _first_last(r.accuracy, "{:.1%}")[1])
    t.add_row("KL to the reference (last step)", f"{r.kl[-1]:.4f}")
    t.add_row("groups with all-equal rewards (no signal)", f"{sum(r.zero_advantage_groups):,} of "
              f"{steps * prompts_per_step:,}")
    _accuracy_row(t, before, after)
    t.add_row("time", f"{r.seconds:.1f} s")
    console.print(t)


def ppo(
    model: str = typer.Argument(..., help="MODEL: the policy to train, an llmlab run dir or an HF checkpoint dir "
                                "(usually the SFT model); a frozen copy is the KL reference."),
    data: str = typer.Option(..., "--data", help="Prompts: a set dir from `llmlab data sft` or a messages JSONL. "
                             "Without --reward-model only tasks with checkable answers (meta) are used."),
    out: str = typer.Option(..., "--out", help="Run directory to write (model, value/, metrics.jsonl, "
                            "ppo_metrics.json, reward_curve.png, checkpoints/)."),
    reward_model: str = typer.Option(None, "--reward-model", help="A reward model from `llmlab reward` [none: the "
                                     "task's verifiable reward, 1 for a right answer]."),
    val: str = typer.Option(None, "--val", help="Held-out tasks for --accuracy [DATA/val.jsonl]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint "
                                "(same options; --steps may grow)."),
    steps: int = typer.Option(50, "--steps", help="PPO steps (one rollout batch each)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per step, one completion each."),
    minibatch_size: int = typer.Option(8, "--minibatch-size", help="Completions per optimizer step."),
    ppo_epochs: int = typer.Option(4, "--ppo-epochs", help="Passes over each step's rollouts."),
    lr: float = typer.Option(1e-4, "--lr", help="Policy learning rate (AdamW, constant)."),
    value_lr: float = typer.Option(1e-3, "--value-lr", help="Value model learning rate."),
    beta: float = typer.Option(0.05, "--beta", help="Per-token KL penalty to the reference."),
    clip_eps: float = typer.Option(0.2, "--clip-eps", help="Policy ratio clip epsilon."),
    value_clip_eps: float = typer.Option(0.2, "--value-clip-eps", help="Value clip around the rollout's values."),
    gamma: float = typer.Option(1.0, "--gamma", help="Discount."),
    lam: float = typer.Option(0.95, "--lam", help="GAE lambda."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Tokens sampled per completion at most."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    missing_eos_penalty: float = typer.Option(0.0, "--missing-eos-penalty", help="Subtracted from the score of a "
                                              "completion that never closes its turn."),
    checkpoint_interval: int = typer.Option(10, "--checkpoint-interval", help="Steps between checkpoints."),
    accuracy: int = typer.Option(0, "--accuracy", help="Greedy-decode this many held-out tasks before/after."),
    seed: int = typer.Option(0, "--seed", help="Seed of the value head, the prompt order and the sampling."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    from llmlab.posttrain.train_ppo import PPOConfig, train_ppo

    cfg = PPOConfig(reward_model=reward_model, steps=steps, batch_size=batch_size, minibatch_size=minibatch_size,
                    ppo_epochs=ppo_epochs, lr=lr, value_lr=value_lr, beta=beta, clip_eps=clip_eps,
                    value_clip_eps=value_clip_eps, gamma=gamma, lam=lam, max_new_tokens=max_new_tokens,
                    temperature=temperature, missing_eos_penalty=missing_eos_penalty,
                    checkpoint_interval=checkpoint_interval, seed=seed, device=device)
    if reward_model is not None and not Path(reward_model).is_dir():
        raise LlmlabError(f"--reward-model {reward_model}: no such directory (write one with `llmlab reward`)")
    data = _source(data, "--data")
    held_out = _held_out(data, _source(val, "--val"), accuracy)
    before = _greedy_accuracy(model, held_out)
    r = train_ppo(model, data, out, cfg, resume=resume, progress=progress)
    after = _greedy_accuracy(out, held_out)
    t = _table(f"llmlab ppo -> {r.out_dir}")
    t.add_row("reward", f"reward model {reward_model}" if reward_model else "verifiable (grade: 1 right, 0 wrong)")
    when, span = _first_last(r.rewards)
    t.add_row(f"mean score ({when})", span)
    graded = [a for a in r.accuracy if a is not None]
    if graded:
        t.add_row(f"sampled accuracy ({_first_last(graded)[0]})", _first_last(graded, "{:.1%}")[1])
    t.add_row(f"KL to the reference, summed over tokens ({when})", _first_last(r.kl)[1])
    t.add_row("clip fraction (mean over steps)", f"{sum(r.clip_frac) / len(r.clip_frac):.1%}")
    t.add_row(f"value loss ({when})", _first_last(r.value_loss, "{:.4f}")[1])
    _accuracy_row(t, before, after)
    t.add_row("time", f"{r.seconds:.1f} s")
    console.print(t)
