"""Benchmark evaluation: task readers and scoring (as lmms-eval scores them), the resumable, shardable runner
behind ``hieravid eval``, and the lmms-eval plugin (:mod:`hieravid.eval.lmms`).

    from hieravid.eval import EvalConfig, run_eval
    summary = run_eval(EvalConfig(tasks=["mvbench"], out=Path("out"), model="Qwen/Qwen2-VL-7B-Instruct",
                                  data_root=Path("data"), methods=["vanilla", "hieravid"], budgets=[0.3]))
"""

from hieravid.eval.runner import EvalConfig, run_eval
from hieravid.eval.tasks import (
    PAPER_TASKS,
    SUITES,
    Sample,
    Score,
    Task,
    TaskResult,
    available_tasks,
    get_task,
    register_task,
    suite_tasks,
)

__all__ = [
    "PAPER_TASKS",
    "SUITES",
    "EvalConfig",
    "Sample",
    "Score",
    "Task",
    "TaskResult",
    "available_tasks",
    "get_task",
    "register_task",
    "run_eval",
    "suite_tasks",
]
