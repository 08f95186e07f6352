"""How far the sampler's log-probs are from the trainer's along long completions, on the embedded model.

Exact on-policy training assumes the tokens were drawn from the distribution the trainer scores.
This samples GSM8K completions of up to ``--tokens`` tokens with opo's engine, scores them with the
training forward (shared prompt, length buckets, chunked head) and prints |trainer - sampler|
per token by position range.

    .venv/bin/python bench/logprob_gap.py --precision fp32 --tokens 512
    .venv/bin/python bench/logprob_gap.py --precision bf16     # where the CPU has native bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from opo.config import load_eval_config
from opo.logprobs import PromptBatch, completion_logprobs
from opo.run import setup
from opo.tasks import encode
from opo.update import autocast_context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = load_eval_config(None, ["task=gsm8k", f"limit={args.prompts}", f"run.threads={args.threads}",
                                  f"run.precision={args.precision}"])
    run = setup(cfg, max_new_tokens=args.tokens)
    model, tok = run.model, run.tok
    prompts = encode(tok, run.task.eval_examples())
    run.close()
    t0 = time.time()
    batch = run.engine.generate(prompts, list(range(len(prompts))), args.samples, args.tokens, 1.0)
    t_gen = time.time() - t0
    plist, gi = batch.prompts()
    ids, mask, sampler = batch.completion_tensors(tok.pad_token_id)  # (N, T) each
    t0 = time.time()
    with torch.no_grad(), autocast_context(args.precision):
        trainer, _ = completion_logprobs(model, PromptBatch.from_lists(plist, tok.pad_token_id), ids, mask, gi)
    t_train = time.time() - t0
    gap = (trainer - sampler).abs() * mask  # (N, T)
    lengths = mask.sum(-1).long().tolist()
    print(f"{args.precision}: {len(lengths)} completions, lengths {sorted(lengths)} "
          f"(generate {t_gen:.0f} s, score {t_train:.0f} s)")
    print("positions   tokens  mean |gap|  max |gap|")
    for lo in range(0, mask.shape[1], 128):
        m = mask[:, lo : lo + 128]
        if m.sum() == 0:
            break
        g = gap[:, lo : lo + 128]
        print(f"{lo:>4}-{lo + 127:<5} {int(m.sum()):>7}  {float(g.sum() / m.sum()):.2e}    {float(g.max()):.2e}")
    print(f"all         {int(mask.sum()):>7}  {float(gap.sum() / mask.sum()):.2e}    {float(gap.max()):.2e}")


if __name__ == "__main__":
    main()
