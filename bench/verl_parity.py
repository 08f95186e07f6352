"""Check opo's advantage estimators against verl's ``core_algos`` on random cases.

Not a test (verl is not a dependency). In a scratch environment:

    python3 -m venv /tmp/verl && /tmp/verl/bin/pip install torch==2.13.0 transformers
    /tmp/verl/bin/pip install --no-deps verl==0.9.1
    /tmp/verl/bin/pip install torch==2.13.0 ray tensordict omegaconf codetiming orjson numpy
    PYTHONPATH=src /tmp/verl/bin/python bench/verl_parity.py 3000

Prints the largest absolute difference per estimator, in fp32 and fp64. Cases: 1-12 responses,
1-8 tokens, right-padded masks, float and 0/1 rewards, mixed group sizes (size 1 included),
groups whose rewards are all equal, gamma in {1, 0.99, 0.5}. Cases where verl raises (a batch with
a single response token) are counted, not compared.
"""

import random
import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos as C

from opo.algos import advantages as A

NAMES = ["opo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]


def verl_advantages(name, scores, mask, gids, gamma):
    n, t = mask.shape
    token_rewards = torch.zeros(n, t, dtype=scores.dtype)
    token_rewards[torch.arange(n), mask.sum(-1).long() - 1] = scores  # outcome reward on the last token
    index = np.array(gids.tolist())
    cfg = OmegaConf.create({"gamma": gamma, "lam": 1.0, "norm_adv_by_std_in_grpo": True})
    m = mask.to(scores.dtype)
    calls = {
        "opo": lambda: C.compute_opo_outcome_advantage(token_rewards, m, index, config=cfg),
        "grpo": lambda: C.compute_grpo_outcome_advantage(token_rewards, m, index, norm_adv_by_std_in_grpo=True, config=cfg),
        "dr_grpo": lambda: C.compute_grpo_outcome_advantage(token_rewards, m, index, norm_adv_by_std_in_grpo=False, config=cfg),
        "rloo": lambda: C.compute_rloo_outcome_advantage(token_rewards, m, index, config=cfg),
        "reinforce_pp": lambda: C.compute_reinforce_plus_plus_outcome_advantage(token_rewards, m, config=cfg),
        "reinforce_pp_baseline": lambda: C.compute_reinforce_plus_plus_baseline_outcome_advantage(token_rewards, m, index, config=cfg),
    }
    return calls[name]()[0]


def ours(name, scores, mask, gids, gamma):
    params = {"gamma": gamma} if name == "reinforce_pp" else {}
    return A.ADVANTAGES.get(name)(scores, mask.to(scores.dtype), gids, **params)


def make_case(rng, dtype):
    n, t = rng.randint(1, 12), rng.randint(1, 8)
    lengths = torch.tensor([rng.randint(1, t) for _ in range(n)])
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    gids = torch.tensor([rng.randrange(rng.randint(1, n)) for _ in range(n)]) * 7 + rng.randint(0, 3)
    kind = rng.random()
    if kind < 0.4:
        scores = [rng.uniform(-3, 3) for _ in range(n)]
    elif kind < 0.8:
        scores = [float(rng.random() < 0.5) for _ in range(n)]
    else:  # some groups with all-equal rewards
        vals = {g: rng.choice([0.0, 1.0, rng.uniform(-2, 2)]) for g in set(gids.tolist())}
        scores = [vals[g] for g in gids.tolist()]
    return torch.tensor(scores, dtype=dtype), mask, gids


def main(cases: int) -> None:
    for dtype in (torch.float32, torch.float64):
        rng = random.Random(0)
        worst = dict.fromkeys(NAMES, 0.0)
        raised = dict.fromkeys(NAMES, 0)
        for _ in range(cases):
            scores, mask, gids = make_case(rng, dtype)
            gamma = rng.choice([1.0, 0.99, 0.5])
            for name in NAMES:
                try:
                    theirs = verl_advantages(name, scores.clone(), mask.clone(), gids.clone(), gamma)
                except ValueError:
                    raised[name] += 1
                    continue
                mine = ours(name, scores.clone(), mask.clone(), gids.clone(), gamma)
                worst[name] = max(worst[name], float((theirs.double() - mine.double()).abs().max()))
        print(f"== {dtype}")
        for name in NAMES:
            print(f"{name:24s} max |verl - opo| = {worst[name]:.2e}   verl raised on {raised[name]} cases")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
