"""The judge's prompt and how its verdict is read (RRM, Guo et al. 2025, arXiv 2505.14674, Sec. 3).

The prompt shows the query, then the two responses as "Assistant 1" and "Assistant 2", then asks for
a step-by-step analysis ending in ``\\boxed{Assistant 1}`` or ``\\boxed{Assistant 2}``: there are no
ties. The verdict is the last box of the text after the last ``</think>`` (the whole text when there
is none); anything else is no verdict, which callers count and treat as a tie.
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_TEMPLATE = """Which assistant answered the query better?

[Query]
{query}

[Assistant 1]
{response_1}

[Assistant 2]
{response_2}

Analyse both answers step by step: first whether each is correct, then how helpful and clear it is. \
Then give your verdict as \\boxed{Assistant 1} or \\boxed{Assistant 2}. There are no ties."""

_FIELD = re.compile(r"\{(query|response_1|response_2)\}")
_LABEL = re.compile(r"^(?:assistant|response|output)?\s*([12])$")


def judge_messages(query: str, response_1: str, response_2: str, template: str = DEFAULT_TEMPLATE,
                   system_prompt: Optional[str] = None) -> list[dict[str, str]]:
    """Chat messages that ask a judge to compare two responses to ``query``. The three fields are
    filled in one pass, so a response that itself contains ``{query}`` stays as written."""
    values = {"query": query, "response_1": response_1, "response_2": response_2}
    user = _FIELD.sub(lambda m: values[m.group(1)], template)
    return ([] if system_prompt is None else [{"role": "system", "content": system_prompt}]) + \
        [{"role": "user", "content": user}]


def check_template(template: str) -> Optional[str]:
    """Why ``template`` cannot be a judge prompt, or None."""
    missing = [f"{{{f}}}" for f in ("query", "response_1", "response_2") if f"{{{f}}}" not in template]
    return f"the judge template lacks {', '.join(missing)}" if missing else None


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None
    when there is none or it is never closed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def parse_verdict(text: str) -> tuple[Optional[int], str]:
    """(1 or 2: the assistant the judge picked, as shown; status). Status is ``ok``, ``no_verdict``
    (no closed box after the reasoning) or ``bad_verdict`` (a box that names neither assistant)."""
    answer = text.rsplit("</think>", 1)[-1]
    boxed = last_boxed(answer)
    if boxed is None:
        return None, "no_verdict"
    label = re.sub(r"\\text\{([^{}]*)\}", r"\1", boxed)  # \boxed{\text{Assistant 1}}
    label = re.sub(r"[\s*_.:]+", " ", label).strip().lower()
    m = _LABEL.match(label)
    return (int(m.group(1)), "ok") if m else (None, "bad_verdict")
