"""``python tests/toycli.py ARGS...``: the real catdiff CLI with the toy tasks registered, for
tests that need a separate process (signals, locks, several ranks)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from catdiff import cli  # noqa: E402
from catdiff.api.hooks import Component, registry  # noqa: E402
from toytask import ToyCondTask, ToyTask  # noqa: E402

for task in (ToyTask, ToyCondTask):
    registry().components["tasks"][task.name] = Component("tasks", task.name, task, "tests")

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
