"""What a hybrid model puts first: the mean next-token distribution over held-out prompts of the
hybrid demonstration's task, top tokens and the two mode tags (docs/hybrid.md).
    .venv/bin/python experiments/first_token.py runs/demo-hybrid/hft/checkpoints/step_0000009"""

import sys

import torch

from opo.config import load_config
from opo.models import load_model
from opo.tasks import build_task, encode

TASK = ["task.prompt_template={question}", "task.generator_args={min_terms: 2, max_terms: 4, min_digits: 1, max_digits: 1}",
        "task.eval_size=60"]


def main(path: str, prompts: int = 20) -> None:
    model, tok = load_model(path)
    examples = build_task(load_config(overrides=TASK).task).eval_examples()[:prompts]
    with torch.no_grad():
        p = torch.stack([model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
                         for ids in encode(tok, examples)]).mean(0)  # (V,)
    top = p.topk(6)
    print(f"{path}: " + ", ".join(f"{tok.convert_ids_to_tokens(int(i))!r} {float(v):.3f}"
                                  for v, i in zip(top.values, top.indices)))
    print("  tags: " + ", ".join(f"{t} {float(p[tok.get_vocab()[t]]):.3f}" for t in ("<think>", "<no_think>")))


if __name__ == "__main__":
    main(sys.argv[1])
