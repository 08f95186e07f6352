"""Where prompts and reference answers come from."""

from typing import Any, Optional

from opo.config import TaskConfig
from opo.tasks.base import Example, Graded, Task
from opo.tasks.chat import decode, encode
from opo.tasks.dataset import load_sources
from opo.tasks.math import MathTask
from opo.tasks.preference import PreferenceTask
from opo.tasks.reasoning_gym import ReasoningGymTask
from opo.tasks.user_reward import UserRewardTask

__all__ = ["Example", "Graded", "MathTask", "PreferenceTask", "ReasoningGymTask", "Task", "UserRewardTask", "build_task", "decode",
           "encode", "limit_prompt_length"]


def build_task(t: TaskConfig, for_training: bool = False) -> Task:
    """The task named by a (validated) task config, graded by ``t.reward_fn`` when one is set;
    ``for_training``: refuse at once a held-out split that leaves nothing to train on."""
    task = _named_task(t, for_training)
    if t.reward_fn is None:
        return task
    return UserRewardTask(task, t.reward_fn, t.grader_workers, t.reward_timeout, t.reward_on_error)


def _named_task(t: TaskConfig, for_training: bool) -> Task:
    if t.name == "reasoning_gym":
        return ReasoningGymTask(
            t.generator, t.generator_args, t.prompt_template or "{question} Answer with just the number.",
            t.system_prompt, t.extractor or "first_number", t.seed, t.eval_seed, t.eval_size, t.exclude_eval,
            t.binary_reward, for_training=for_training,
        )
    if t.name == "preference":
        return PreferenceTask(t.data_path, t.prompt_template, t.system_prompt, t.seed, t.eval_seed, t.eval_size,
                              t.skip_bad_rows, t.exclude_eval, for_training, t.pair_orders)
    source, held_out = load_sources(t) if t.name == "dataset" else (None, None)
    return MathTask(
        t.name, t.data_path, t.question_field, t.answer_field, t.answer_format, t.prompt_template, t.system_prompt,
        t.extractor, t.eval_size, t.grader_workers, t.grader_timeout, t.skip_bad_rows, exclude_eval=t.exclude_eval,
        for_training=for_training, source=source, held_out=held_out,
    )


def limit_prompt_length(task: Task, tokenizer: Any, model: Any, max_new_tokens: int,
                        engine_limit: Optional[int] = None) -> None:
    """Make ``task`` refuse (or, with task.skip_bad_rows, leave out) prompts whose token count plus
    ``max_new_tokens`` exceeds the model's context, or the sampler's own limit ``engine_limit``
    (vLLM's ``max_model_len``), so no step fails or silently degrades later."""
    context = getattr(model.config, "max_position_embeddings", None)
    what = "the model's context"
    if engine_limit is not None and (context is None or engine_limit < context):
        context, what = engine_limit, "vllm.max_model_len"
    if context is None:  # the model states no limit
        return

    def problem(example: Example) -> Optional[str]:
        n = len(encode(tokenizer, [example])[0])
        if n + max_new_tokens <= context:
            return None
        return (f"prompt of {n} tokens + {max_new_tokens} new tokens exceeds {what} of {context} tokens"
                + (" (max_position_embeddings)" if what == "the model's context" else ""))

    task.limit_prompts(problem)
