"""Choosing among N candidates with pairwise comparisons (RRM, Guo et al. 2025, arXiv 2505.14674,
Sec. 3.3): a knockout bracket (n - 1 matches in ceil(log2 n) rounds) and a round robin over all
pairs rated by sequential ELO or a Bradley-Terry fit.

Both take ``compare(pairs) -> scores``: for each (i, j) the score of i against j, 1.0 a win, 0.0 a
loss, 0.5 a tie (no verdict). A whole round goes to ``compare`` at once, so a batched judge
generates it in one pass; :func:`pairwise` lifts a one-pair ``compare(i, j)`` into that form. Each
tournament is also a *plan*, a generator that asks for one round at a time, so :func:`play` can run
many side by side (one per prompt) and batch their rounds together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Generator, Literal, Optional

Compare = Callable[[list[tuple[int, int]]], list[float]]


def pairwise(fn: Callable[[int, int], float]) -> Compare:
    """A batch ``compare`` from one that takes a single pair."""
    return lambda pairs: [fn(i, j) for i, j in pairs]


@dataclass
class Standing:
    """A tournament's outcome. ``ranking``: candidates, best first; ``scores``: per candidate
    (knockout: rounds survived, a bye included; round robin: rating); ``calls``: comparisons made
    (before any both-orders doubling by :class:`~opo.judges.pairwise.PairJudge`)."""

    ranking: list[int]
    scores: list[float]
    calls: int

    @property
    def best(self) -> int:
        return self.ranking[0]


Plan = Generator[list[tuple[int, int]], list[float], Standing]


def play(plans: list[Plan], compare: Callable[[list[tuple[int, int, int]]], list[float]]) -> list[Standing]:
    """Run tournaments side by side: each round, the pairs every unfinished plan asks for go to
    ``compare`` in one call, as (plan index, i, j), and the scores back to each plan. With a
    batching judge, a round of all tournaments (one per prompt, say) is one batch of judge calls."""
    out: list[Optional[Standing]] = [None] * len(plans)
    asks: dict[int, list[tuple[int, int]]] = {}

    def advance(k: int, scores: Optional[list[float]]) -> None:
        try:
            asks[k] = next(plans[k]) if scores is None else plans[k].send(scores)
        except StopIteration as done:
            out[k] = done.value
            asks.pop(k, None)

    for k in range(len(plans)):
        advance(k, None)
    while asks:
        requests = [(k, i, j) for k, pairs in asks.items() for i, j in pairs]
        scores = compare(requests)
        if len(scores) != len(requests):
            raise ValueError(f"compare returned {len(scores)} scores for {len(requests)} pairs")
        at = 0
        for k, pairs in list(asks.items()):
            advance(k, scores[at:at + len(pairs)])
            at += len(pairs)
    return out  # type: ignore[return-value]


def _one(plan: Plan, compare: Compare) -> Standing:
    return play([plan], lambda requests: compare([(i, j) for _, i, j in requests]))[0]


def knockout(n: int, compare: Compare, *, votes: int = 1, seeds: Optional[list[int]] = None,
             rng: Optional[random.Random] = None) -> Standing:
    """Single-elimination bracket over candidates ``0..n-1`` (see :func:`knockout_plan`)."""
    return _one(knockout_plan(n, votes=votes, seeds=seeds, rng=rng), compare)


def knockout_plan(n: int, *, votes: int = 1, seeds: Optional[list[int]] = None,
                  rng: Optional[random.Random] = None) -> Plan:
    """Single-elimination bracket over candidates ``0..n-1``, one round per request.

    Pairing is seeded: ``seeds`` lists the candidates strongest first (None: a random order from
    ``rng``); each round the best remaining seed meets the worst, the second the second-worst, and
    with an odd field the best seed gets a bye. A match is ``votes`` comparisons (asked together
    with the round's other matches), won by the majority of scores; an exact tie is a coin flip.
    That makes n - 1 matches, ``votes * (n - 1)`` calls. Ranking: the winner, then the losers by
    the round they fell in (later first), each round's in seed order.
    """
    if n < 1 or votes < 1:
        raise ValueError(f"knockout needs n >= 1 and votes >= 1, got n={n}, votes={votes}")
    rng = rng or random.Random(0)
    order = list(seeds) if seeds is not None else rng.sample(range(n), n)
    if sorted(order) != list(range(n)):
        raise ValueError(f"seeds must list each of the {n} candidates once, got {seeds}")
    wins = [0.0] * n
    calls = 0
    fallen: list[list[int]] = []  # losers, round by round
    while len(order) > 1:
        bye = order[:1] if len(order) % 2 else []
        field = order[len(bye):]
        matches = [(field[k], field[-1 - k]) for k in range(len(field) // 2)]
        scores = yield [m for m in matches for _ in range(votes)]
        calls += len(scores)
        winners, losers = set(bye), set()
        for b in bye:
            wins[b] += 1  # a bye survives the round like a win
        for k, (i, j) in enumerate(matches):
            total = sum(scores[k * votes:(k + 1) * votes])
            i_wins = total > votes / 2 or (total == votes / 2 and rng.random() < 0.5)
            w, l = (i, j) if i_wins else (j, i)
            wins[w] += 1
            winners.add(w)
            losers.add(l)
        fallen.append([c for c in order if c in losers])
        order = [c for c in order if c in winners]  # winners keep their seed order
    ranking = order + [c for r in reversed(fallen) for c in r]
    return Standing(ranking, wins, calls)


def round_robin(n: int, compare: Compare, *, rating: Literal["elo", "bt"] = "elo", k: float = 32.0,
                initial: float = 1000.0, scale: float = 400.0, rng: Optional[random.Random] = None) -> Standing:
    """Every pair once, then ratings (see :func:`round_robin_plan`)."""
    return _one(round_robin_plan(n, rating=rating, k=k, initial=initial, scale=scale, rng=rng), compare)


def round_robin_plan(n: int, *, rating: Literal["elo", "bt"] = "elo", k: float = 32.0, initial: float = 1000.0,
                     scale: float = 400.0, rng: Optional[random.Random] = None) -> Plan:
    """Every pair once (n(n-1)/2 calls, one request), then ratings.

    ``elo``: sequential ELO over the games in a random order from ``rng``: each starts at
    ``initial``; after a game E_i = 1 / (1 + 10^((R_j - R_i) / scale)) and R_i += k (S_i - E_i).
    ``bt``: a Bradley-Terry fit (minorise-maximise, Hunter 2004) with one half-win of prior per
    game each way, so a candidate that won (or lost) everything gets a finite rating; reported on
    the ELO scale, ``initial + scale * log10(p_i / geometric mean p)``. Ties in rating rank the lower
    index first.
    """
    if n < 1:
        raise ValueError(f"round_robin needs n >= 1, got {n}")
    if rating not in ("elo", "bt"):
        raise ValueError(f"rating must be elo or bt, got {rating!r}")
    rng = rng or random.Random(0)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    games = list(zip(pairs, (yield pairs))) if pairs else []
    if rating == "elo":
        r = [initial] * n
        for (i, j), s in rng.sample(games, len(games)):
            e = 1.0 / (1.0 + 10 ** ((r[j] - r[i]) / scale))
            r[i], r[j] = r[i] + k * (s - e), r[j] - k * (s - e)
    else:
        r = _bradley_terry(n, games, initial, scale)
    ranking = sorted(range(n), key=lambda c: (-r[c], c))
    return Standing(ranking, r, len(games))


def _bradley_terry(n: int, games: list[tuple[tuple[int, int], float]], initial: float, scale: float,
                   iterations: int = 200) -> list[float]:
    if not games:
        return [initial] * n
    won = [0.0] * n
    met = [[0.0] * n for _ in range(n)]
    for (i, j), s in games:
        won[i] += s + 0.5  # the half-win prior each way
        won[j] += 1 - s + 0.5
        met[i][j] += 2  # the game plus the prior's two halves
        met[j][i] += 2
    p = [1.0] * n
    for _ in range(iterations):
        p = [won[i] / sum(met[i][j] / (p[i] + p[j]) for j in range(n) if met[i][j]) for i in range(n)]
        g = math.exp(sum(math.log(x) for x in p) / n)
        p = [x / g for x in p]
    return [initial + scale * math.log10(x) for x in p]


def reward_plan(n: int, mode: Literal["knockout", "elo", "wins"], *, opponents: int = 2, votes: int = 1,
                rating: Literal["elo", "bt"] = "elo", rng: Optional[random.Random] = None) -> Plan:
    """A tournament among n responses to one prompt whose ``scores`` are rewards in [0, 1].

    ``knockout``: rounds survived / ceil(log2 n) (the winner 1, first-round losers 0); ``elo``: the
    round robin's ratings (``rating``) spread over [0, 1] within the group, (R - min) / (max - min),
    so the best scores 1 and the worst 0 as in a knockout (the raw expected scores of K = 8 span
    only about 0.37 to 0.64); ``wins``: mean score against ``opponents`` others drawn at random
    (ties 0.5). A group whose ratings are all equal, and a single response, score 0.5.
    """
    rng = rng or random.Random(0)
    if n == 1:
        return Standing([0], [0.5], 0)
    if mode == "knockout":
        s = yield from knockout_plan(n, votes=votes, rng=rng)
        return Standing(s.ranking, [w / math.ceil(math.log2(n)) for w in s.scores], s.calls)
    if mode == "elo":
        s = yield from round_robin_plan(n, rating=rating, rng=rng)
        low, high = min(s.scores), max(s.scores)
        spread = [(r - low) / (high - low) if high > low else 0.5 for r in s.scores]
        return Standing(s.ranking, spread, s.calls)
    if mode != "wins":
        raise ValueError(f"judge reward mode must be knockout, elo or wins, got {mode!r}")
    pairs = [(i, j) for i in range(n) for j in rng.sample([c for c in range(n) if c != i], min(opponents, n - 1))]
    scores = yield pairs
    per = [sum(s for (i, _), s in zip(pairs, scores) if i == c) / min(opponents, n - 1) for c in range(n)]
    return Standing(sorted(range(n), key=lambda c: (-per[c], c)), per, len(pairs))
