"""A judge served over HTTP by any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp,
a hosted API), through the ``openai`` client.

Each item is one request, ``concurrency`` of them in flight at a time. A request that times out, fails
to connect or gets a 429/5xx is retried ``retries`` times with exponential backoff; an item that still
fails becomes a ``timeout`` or ``error`` judgment, so :meth:`HTTPJudge.judge` never raises for a failing
server. Its worst case is about ``ceil(n / concurrency) * (retries + 1) * (timeout + backoff)``.

Answers are cached (in memory, and appended as JSONL to ``cache_path`` when given) under a hash of the
judge's name, its sampling settings, the messages sent, the seed of :meth:`HTTPJudge.reseed` and the
item's occurrence index in the call: the k-th copy of an item in one call is a separate sample (majority
votes stay independent), so is the same item under another seed (another step), while a rerun of the
same batch under the same seed (a resumed run) reuses every answer. Only answers are cached, never failures; the
cache keeps the judge's text and re-reads its verdict on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, TextIO, Union

from opo.judges.base import Judgment
from opo.judges.verdict import DEFAULT_TEMPLATE, check_template, judge_messages, parse_verdict

try:
    import openai
except ImportError:  # a clear message instead of a bare ModuleNotFoundError deep in a run
    raise ImportError("opo.judges.http needs the openai client: pip install openai "
                      "(or pip install 'opo-rl[judge]')") from None

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}  # transient; other 4xx would fail again the same way
_BACKOFF_S = 0.5  # first retry's wait, doubled each retry, capped at _BACKOFF_MAX_S
_BACKOFF_MAX_S = 8.0


class HTTPJudge:
    """A :class:`~opo.judges.base.Judge` that asks ``model`` at ``base_url`` (e.g.
    ``http://127.0.0.1:8000/v1``). The API key is read from the environment variable ``api_key_env``
    ("EMPTY" when unset, as local servers expect); it appears in no name, repr, log, error or cache.
    Sampling sends exactly ``temperature`` and ``max_tokens`` (a server may still apply its own
    defaults to other parameters: vLLM reads the model's generation_config.json unless started with
    ``--generation-config vllm``).

    ``counts``: ``requests`` (HTTP attempts), ``retries``, ``cache_hits``, ``failures`` (items that
    ended as timeout or error) and ``cache_skipped`` (unreadable lines of the cache file).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 512,
                 temperature: float = 0.6, concurrency: int = 8, timeout: float = 60.0, retries: int = 2,
                 cache_path: Optional[Union[str, Path]] = None, template: str = DEFAULT_TEMPLATE,
                 system_prompt: Optional[str] = None) -> None:
        problem = check_template(template)
        if problem:
            raise ValueError(problem)
        if concurrency < 1 or retries < 0 or timeout <= 0 or max_tokens < 1:
            raise ValueError(f"HTTPJudge needs concurrency >= 1, retries >= 0, timeout > 0 and max_tokens >= 1, got "
                             f"concurrency={concurrency}, retries={retries}, timeout={timeout}, max_tokens={max_tokens}")
        self.name = f"http:{model}@{base_url}"
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.concurrency = concurrency
        self.retries = retries
        self.template = template
        self.system_prompt = system_prompt
        self.counts: Counter[str] = Counter()
        self._key = os.environ.get(api_key_env) or "EMPTY"
        # the client's own retries are off: ours count them and give up into a judgment
        self._client = openai.OpenAI(base_url=base_url, api_key=self._key, timeout=timeout, max_retries=0)
        self._lock = threading.Lock()  # counts are updated from the worker threads
        self._salt = 0  # set by reseed: the same request in another step or tournament is a new sample
        self._cache: dict[str, str] = {}
        self._cache_path = Path(cache_path) if cache_path is not None else None
        if self._cache_path is not None and self._cache_path.exists():
            self._load_cache(self._cache_path)

    def __repr__(self) -> str:
        return f"HTTPJudge({self.name!r}, temperature={self.temperature}, max_tokens={self.max_tokens})"

    def reseed(self, value: int) -> None:
        """Key later answers by ``value`` too: a comparison asked again under another value (the next
        training step, another tournament) is sampled afresh, while the same value (a resumed step)
        finds its answers in the cache."""
        self._salt = value

    def judge(self, items: list[tuple[str, str, str]]) -> list[Judgment]:
        """One judgment per (query, response 1, response 2), in order; cached answers are reused and
        the rest asked ``concurrency`` at a time."""
        seen: Counter[str] = Counter()
        keys, messages = [], []
        for query, r1, r2 in items:
            msgs = judge_messages(query, r1, r2, self.template, self.system_prompt)
            base = json.dumps([self.name, self.temperature, self.max_tokens, msgs, self._salt])
            keys.append(hashlib.sha256(json.dumps([base, seen[base]]).encode()).hexdigest())
            seen[base] += 1
            messages.append(msgs)
        out: list[Optional[Judgment]] = [None] * len(items)
        todo = []
        for i, key in enumerate(keys):
            if key in self._cache:
                out[i] = _judgment(self._cache[key])
                self.counts["cache_hits"] += 1
            else:
                todo.append(i)
        if todo:
            with ThreadPoolExecutor(self.concurrency) as pool, self._cache_file() as f:
                futures = {pool.submit(self._ask, messages[i]): i for i in todo}
                for future in as_completed(futures):  # each answer is saved as it comes: a crash keeps them
                    i, answer = futures[future], future.result()
                    if isinstance(answer, Judgment):
                        out[i] = answer
                        with self._lock:
                            self.counts["failures"] += 1
                        continue
                    self._cache[keys[i]] = answer
                    out[i] = _judgment(answer)
                    if f is not None:
                        f.write(json.dumps({"key": keys[i], "text": answer}) + "\n")
                        f.flush()
        return out  # type: ignore[return-value]  # every slot is filled above

    def _ask(self, messages: list[dict[str, str]]) -> Union[str, Judgment]:
        """The judge's text, or the failure's judgment after up to ``retries`` retries; never raises."""
        try:
            return self._try(messages)
        except Exception as e:  # anything the client library did not foresee: one item's error, not the run's
            return Judgment(None, self._redact(f"{type(e).__name__}: {e}")[:200], "error")

    def _try(self, messages: list[dict[str, str]]) -> Union[str, Judgment]:
        failure = Judgment(None, "", "error")
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(_BACKOFF_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
            with self._lock:
                self.counts["requests"] += 1
                self.counts["retries"] += attempt > 0
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature,  # type: ignore[arg-type]
                    max_tokens=self.max_tokens)
            except openai.APITimeoutError:  # a subclass of APIConnectionError: caught first
                failure = Judgment(None, "", "timeout")
                continue
            except openai.APIConnectionError:
                failure = Judgment(None, "cannot connect to the judge server", "error")
                continue
            except openai.APIStatusError as e:
                failure = Judgment(None, self._redact(f"HTTP {e.status_code}: {e.message}")[:200], "error")
                if e.status_code in _RETRY_STATUS:
                    continue
                break
            except (openai.OpenAIError, ValueError) as e:  # a body that is not the JSON it claims to be
                return Judgment(None, f"unreadable response ({type(e).__name__})", "error")
            text = _content(response)
            # an answer that is not a chat completion: asking again would not help
            return text if text is not None else Judgment(None, "the response holds no message text", "error")
        return failure

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<api key>") if self._key != "EMPTY" else text

    def _load_cache(self, path: Path) -> None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                key, text = row["key"], row["text"]
            except (ValueError, TypeError, KeyError):  # a line cut short by a crash, or not ours
                self.counts["cache_skipped"] += 1
                continue
            if isinstance(key, str) and isinstance(text, str):
                self._cache[key] = text

    @contextmanager
    def _cache_file(self) -> Iterator[Optional[TextIO]]:
        """``cache_path`` open for appending, or None without one."""
        path = self._cache_path
        if path is None:
            yield None
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        cut = False
        if path.exists() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with path.open("a", encoding="utf-8") as f:
            if cut:  # a last line cut short must not swallow the next one
                f.write("\n")
            yield f


def _content(response: object) -> Optional[str]:
    """The first choice's text, or None when the response is not a chat completion (a non-JSON body
    comes back from the client as a plain string; JSON of another shape lacks fields). A server
    running a reasoning parser (vLLM's ``--reasoning-parser``) returns the thinking apart, as
    ``reasoning`` (``reasoning_content`` in older versions): it is put back before a ``</think>``, so
    the verdict is still read from the answer alone, and a reply cut off while thinking has no verdict
    instead of no text."""
    try:
        message = response.choices[0].message  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    content = getattr(message, "content", None)
    thinking = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
    if isinstance(thinking, str) and (content is None or isinstance(content, str)):
        return f"{thinking}</think>{content or ''}"
    return content if isinstance(content, str) else None


def _judgment(text: str) -> Judgment:
    choice, status = parse_verdict(text)
    return Judgment(choice, text, status)
