"""The `llmlab` command. Each command parses its options and calls the library; no logic lives here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from llmlab.cli import (
    bench,
    compress_cmds,
    data_cmds,
    diagnose_cmds,
    drill_cmds,
    eval_cmds,
    generate_cmds,
    model_cmds,
    posttrain_cmds,
    pretrain_cmds,
    run_cmd,
    serve_cmds,
    tokenizer_cmds,
)
from llmlab.errors import LlmlabError
from llmlab.train import distributed

app = typer.Typer(help="llmlab: LLM techniques from scratch, proven equal to the references.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # help text is plain: "[default: 8]" is a default, not rich markup
app.command("run", help="The main job, the whole pipeline on a preset: corpus, tokenizer, data, pretraining, "
                        "evaluation, SFT, DPO, GRPO, post-training evaluation.")(run_cmd.run)
app.command("pretrain", help="Pretrain a model on token shards: progress, val loss, samples, checkpoints, --resume.")(
    pretrain_cmds.pretrain)
app.command("diagnose", help="Check a pretraining run's curves (NaN, spikes, plateaus, divergence, overfitting, "
                             "init/unigram sanity); writes health.json, exit 1 on an error.")(diagnose_cmds.diagnose)
app.command("generate", help="Generate text from MODEL (run dir or HF dir); --stream prints tokens as they come.")(
    generate_cmds.generate)
app.command("chat", help="Chat with MODEL in the terminal, with its chat template (ChatML by default).")(
    generate_cmds.chat)
app.command("serve", help="Serve MODEL: an OpenAI-compatible API (/v1) and a chat page (/).")(serve_cmds.serve)
app.command("sft", help="Fine-tune MODEL on chat data, loss on assistant tokens only; --lora for adapters.")(
    posttrain_cmds.sft)
app.command("reward", help="Train a reward model on preference pairs: MODEL + a scalar head, Bradley-Terry loss.")(
    posttrain_cmds.reward)
app.command("dpo", help="Preference-tune MODEL on pairs against its frozen copy: DPO, IPO, SimPO, RPO "
                        "(--rpo-alpha), KTO; or ORPO, without one.")(posttrain_cmds.dpo)
app.command("grpo", help="GRPO on tasks with checkable answers: group-normalized rewards, k3 KL to the start.")(
    posttrain_cmds.grpo)
app.command("ppo", help="RLHF with PPO: value model, per-token KL to the SFT start, GAE; task or --reward-model.")(
    posttrain_cmds.ppo)
app.command("export", help="Export MODEL (llmlab run dir or HF dir) to another format.")(model_cmds.export)
app.command("compress", help="Quantize MODEL's Linear layers (int8, llm.int8, rtn, gptq, awq, nf4): write a run dir "
                             "(--out) and/or compare perplexities on held-out text (--data).")(compress_cmds.compress)
app.command("info", help="Show a model's config, parameters and FLOPs (llmlab run dir or HF dir).")(
    model_cmds.info)
app.add_typer(tokenizer_cmds.app, name="tokenizer", help="Train byte-level BPE tokenizers and encode text with them.")
app.add_typer(data_cmds.app, name="data", help="Corpus: fetch the default text (sha256-checked), prepare token shards.")
app.add_typer(drill_cmds.app, name="drill", help="Drills: hand-write LLM building blocks, graded by llmlab's code.")
app.add_typer(eval_cmds.app, name="eval", help="Evaluate a model (strided perplexity) and score text against "
              "references (BLEU, chrF, ROUGE, METEOR).")
app.add_typer(bench.app, name="bench", help="Benchmarks: ours vs the alternative, measured in one run.")

err = Console(stderr=True, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one red line and exit 2, never a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)  # without standalone_mode, click returns ctx.exit's code
    except LlmlabError as e:
        err.print(Text.assemble(("error: ", "bold red"), str(e)))  # the message is never parsed as markup
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except typer.TyperException as e:  # bad option values, unknown commands: click's own one-line usage message
        e.show()
        return e.exit_code
    return code if isinstance(code, int) else 0


def entry() -> None:
    code = main()
    if distributed.launched():  # a torchrun worker: see exit_worker for why it skips the normal exit
        distributed.exit_worker(code)
    sys.exit(code)

