"""Command line: ``opo train [CONFIG.yaml] [key=value ...]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, NoReturn, Optional

from opo.config import (
    Config,
    ConfigError,
    DiagnoseConfig,
    EvalConfig,
    HybridDataConfig,
    PairsConfig,
    SftConfig,
    describe,
    load_config,
    load_diagnose_config,
    load_eval_config,
    load_hybrid_data_config,
    load_pairs_config,
    load_sft_config,
)
from opo.errors import DiskFull, TrainingAborted

USAGE = """opo: on-policy RL for language models with verifiable rewards (OPO, arXiv 2505.23585)

commands:
  opo train [CONFIG.yaml] [key=value ...]   train a policy (no arguments: the embedded default)
  opo sft   [CONFIG.yaml] [key=value ...]   supervised fine-tuning on chat JSONL (loss on assistant tokens)
  opo eval  [CONFIG.yaml] [key=value ...]   pass@k / maj@k / greedy accuracy on a benchmark
  opo diagnose [CONFIG.yaml] [key=value ...] gradient variance under each reward baseline
  opo hybrid-data [CONFIG.yaml] [key=value ...] thinking + direct answers kept when correct, for opo sft
  opo pairs [key=value ...]                 preference pairs (correct vs incorrect answers) to train a judge
  opo report RUN_DIR [RUN_DIR ...]          one HTML file overlaying runs' metrics and configs

Run 'opo COMMAND --help' for every config key of a command."""


def _split_args(args: list[str]) -> tuple[Optional[str], list[str]]:
    config = None
    if args and "=" not in args[0]:
        config, args = args[0], args[1:]
    return config, args


def _who() -> str:
    """``opo``, or ``opo (rank R)`` in a multi-process job, so an error names the process that failed."""
    return f"opo (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "opo"


# name -> (one-line help, what --help says before the config keys, the config whose keys it lists)
COMMANDS: dict[str, tuple[str, str, Callable[[], object]]] = {
    "train": ("train a policy with OPO (or another registered algorithm)",
              "Train a policy. Settings come from the defaults, then CONFIG.yaml, then key=value overrides (values\n"
              "are YAML: 1e-5, true, null, {a: 1}; text settings are taken as written).", Config),
    "sft": ("supervised fine-tuning on chat conversations (loss on assistant tokens)",
            "Fine-tune a model on a chat JSONL file, one {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}\n"
            "per line; the loss covers each assistant message and its end-of-turn token. E.g.\n"
            "  opo sft data.path=chats.jsonl data.eval_size=200 \"sft.add_tokens=['<think>','</think>']\"\n"
            "The fine-tuned model is the last checkpoint (its path is printed): use it as model.path.\n"
            "Shortcuts: data=FILE, epochs=, lr=, resume=, seed=, threads=, precision=, run_dir=.", SftConfig),
    "eval": ("evaluate a model: pass@k, maj@k, avg@n, greedy accuracy (hybrid models: HAcc, think rate)",
             "Evaluate a model (embedded, a local directory, an opo checkpoint, a hub id) on a task, e.g.\n"
             "  opo eval task=math500 n=8 k=1,4,8 temperature=0.6 max_new_tokens=1024\n"
             "Shortcuts: task=NAME, limit=N (first N problems), data_path=FILE, seed=, threads=, precision=, out_dir=.",
             EvalConfig),
    "diagnose": ("per-response gradients: variance under each reward baseline, |g|^2 vs length",
                 "Sample K responses to P prompts, measure each response's gradient of log pi, and report\n"
                 "the policy-gradient variance under each baseline (none, group mean, GRPO, RLOO, OPO, exact optimal)\n"
                 "and how well length predicts |g|^2. Shortcuts: prompts=P samples=K max_new_tokens=T task=NAME seed=\n"
                 "threads= out_dir=.", DiagnoseConfig),
    "hybrid-data": ("hybrid thinking, data stage: correct thinking and direct answers as chat rows for opo sft",
                    "Sample K thinking and K direct completions for each of the first N training problems, keep\n"
                    "correct ones (rejection sampling) and write them as chat JSONL in the hybrid format, e.g.\n"
                    "  opo hybrid-data problems=256 samples=4 task.generator_args='{min_terms: 2, max_terms: 4}'\n"
                    "Shortcuts: task=NAME, seed=, threads=, precision=, run_dir=.", HybridDataConfig),
    "pairs": ("judges, data stage: preference pairs (a correct and an incorrect answer) from opo eval samples",
              "Pair each problem's correct and incorrect responses from an 'opo eval n=8' run into\n"
              "{query, chosen, rejected} rows for 'opo train task=preference' (training a judge), e.g.\n"
              "  opo pairs samples=runs/eval-x/samples.jsonl out=pairs.jsonl per_problem=4", PairsConfig),
}


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="opo", description=USAGE, formatter_class=raw)
    sub = parser.add_subparsers(dest="command")
    for name, (short, long, config) in COMMANDS.items():
        p = sub.add_parser(name, help=short, description=f"{long}\n\nconfig keys:\n{describe(config())}",
                           formatter_class=raw)
        p.add_argument("settings", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p_report = sub.add_parser("report", help="one self-contained HTML file comparing runs")
    p_report.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl and config.yaml)")
    p_report.add_argument("-o", "--out", default="report.html", help="output HTML file (default: report.html)")
    p_report.add_argument("--svg-dir", help="also write each chart as its own SVG file into this directory")
    p_report.add_argument("--mean-seeds", action="store_true",
                          help="one line per group of runs that differ only in run.seed: the mean over the seeds, "
                               "their range shaded")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(ns)
    except ConfigError as e:
        print(f"{_who()}: config error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad data files, models and similar input errors, already naming what is wrong
        print(f"{_who()}: error: {e}", file=sys.stderr)
        return 2
    except TrainingAborted as e:
        print(f"{_who()}: training aborted: {e}", file=sys.stderr)
        return 3
    except DiskFull as e:  # the last good checkpoint is kept: free space and resume
        print(f"{_who()}: error: {e}", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    except KeyboardInterrupt:  # outside the training loop (which stops after its step): nothing half-written
        print(f"{_who()}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT.value


def _dispatch(ns: argparse.Namespace) -> int:
    """Run one command; heavy imports (torch: seconds) only once its config is valid, and inside
    ``main``'s handlers, so a Ctrl-C during them is one line too."""
    from opo.runtime import reuse_large_allocations

    reuse_large_allocations()  # a process-wide choice, so the CLI (not the library) makes it
    if ns.command == "report":
        from opo.commands.report import run_report

        run_report(ns.runs, ns.out, ns.svg_dir, ns.mean_seeds)
        return 0
    config_path, overrides = _split_args(ns.settings)
    if ns.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"'opo {ns.command}' runs on one process; only 'opo train' runs under torchrun")
    if ns.command == "train":
        cfg = load_config(config_path, overrides)
        from opo.commands.train import train

        summary = train(cfg)
        if "stopped" in summary:  # stopped cleanly by a signal: the conventional 128 + signal number
            return 128 + signal.Signals[summary["stopped"]].value
    elif ns.command == "sft":
        scfg = load_sft_config(config_path, overrides)
        from opo.commands.sft import sft

        summary = sft(scfg)
        if "stopped" in summary:
            return 128 + signal.Signals[summary["stopped"]].value
    elif ns.command == "diagnose":
        dcfg = load_diagnose_config(config_path, overrides)
        from opo.commands.diagnose import run_diagnose

        run_diagnose(dcfg)
    elif ns.command == "hybrid-data":
        hcfg = load_hybrid_data_config(config_path, overrides)
        from opo.commands.hybrid_data import run_hybrid_data

        run_hybrid_data(hcfg)
    elif ns.command == "pairs":
        pcfg = load_pairs_config(config_path, overrides)
        from opo.commands.pairs import run_pairs

        run_pairs(pcfg)
    else:
        ecfg = load_eval_config(config_path, overrides)
        from opo.commands.eval import run_eval

        run_eval(ecfg)
    return 0


def entry(command: Callable[[], int] = main) -> NoReturn:
    """The ``opo`` executable: run ``command`` and exit with its code. Once it is done, everything is
    written; the interpreter's shutdown (seconds with torch loaded) then ignores Ctrl-C, which would
    otherwise print a KeyboardInterrupt from it."""
    try:
        code = command()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # between the command's own handlers and the line above
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{_who()}: interrupted", file=sys.stderr)
        code = 128 + signal.SIGINT.value
    sys.exit(code)


if __name__ == "__main__":
    entry()
