"""Where prompts and reference answers come from."""

from opo.config import TaskConfig
from opo.tasks.base import Example, Graded, Task
from opo.tasks.math import MathTask
from opo.tasks.reasoning_gym import ReasoningGymTask

__all__ = ["Example", "Graded", "MathTask", "ReasoningGymTask", "Task", "build_task"]


def build_task(t: TaskConfig) -> Task:
    """The task named by a (validated) task config."""
    if t.name == "reasoning_gym":
        return ReasoningGymTask(
            t.generator, t.generator_args, t.prompt_template or "{question} Answer with just the number.",
            t.system_prompt, t.extractor or "first_number", t.seed, t.eval_seed, t.eval_size, t.exclude_eval,
            t.binary_reward,
        )
    return MathTask(
        t.name, t.data_path, t.question_field, t.answer_field, t.answer_format, t.prompt_template, t.system_prompt,
        t.extractor, t.eval_size, t.grader_workers, t.grader_timeout,
    )
