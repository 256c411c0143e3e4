"""Drive Forager tasks from OpenEnv's own client (pip install openenv-core); trains nothing.

    forager openenv --port 8000 &          # serves $FORAGER_HOME/tasks; every episode becomes a trajectory
    python examples/openenv_client.py http://127.0.0.1:8000

A trainer (TRL's GRPO, SkyRL, torchforge, ...) does the same with a model choosing the actions.
"""

import sys

from openenv.core import GenericEnvClient

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
with GenericEnvClient(base_url=url, message_timeout_s=900).sync() as env:  # grading runs test suites
    for seed in range(3):
        result = env.reset(seed=seed, model="example")  # a task drawn by seed; its env is made now
        task = result.observation
        print(f"== {task['task_id']}: {task['problem_statement'].splitlines()[0]}")
        for command in ["git status --short", "python -m pytest -q -x 2>&1 | tail -3"]:
            result = env.step({"type": "shell", "command": command})
            print(f"$ {command}\n{result.observation['output']}", end="")
        # a model would edit here: {"type": "edit", "path": ..., "old": ..., "new": ...}
        result = env.step({"type": "submit"})  # graded in a fresh container
        print(f"reward {result.reward} ({result.observation['exit_reason']}), "
              f"trajectory {result.observation['trajectory_id']}")
