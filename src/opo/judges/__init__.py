"""Reward reasoning models: judges that reason before they pick the better of two responses, and
the tournaments that turn their pairwise verdicts into a choice among N (Guo et al. 2025,
arXiv 2505.14674)."""

from opo.judges.base import Judge, Judgment
from opo.judges.pairwise import PairJudge, Verdict
from opo.judges.tournament import Standing, knockout, knockout_plan, pairwise, play, reward_plan, round_robin, round_robin_plan
from opo.judges.verdict import DEFAULT_TEMPLATE, judge_messages, parse_verdict

__all__ = ["DEFAULT_TEMPLATE", "Judge", "Judgment", "PairJudge", "Standing", "Verdict", "judge_messages", "knockout",
           "knockout_plan", "pairwise", "parse_verdict", "play", "reward_plan", "round_robin", "round_robin_plan"]
