"""Where prompts and reference answers come from."""

from opo.tasks.base import Example, Task
from opo.tasks.reasoning_gym import ReasoningGymTask

__all__ = ["Example", "ReasoningGymTask", "Task"]
