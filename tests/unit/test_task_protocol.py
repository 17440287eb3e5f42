"""Every task pack has every member of the Task protocol, so callers use them without probing."""

from __future__ import annotations

import pytest

from tuneforge.config.data import DataSpec
from tuneforge.tasks import TASKS, get_task
from tuneforge.tasks.base import Task, TaskBase

PACK_OPTIONS = {"translation": {"direction": "en-vi"}}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_pack_is_a_task(name):
    task = get_task(name, **PACK_OPTIONS.get(name, {}))
    assert isinstance(task, TaskBase) and isinstance(task, Task)
    members = [m for m in dir(Task) if not m.startswith("_")] + list(Task.__annotations__)
    assert all(hasattr(task, m) for m in members)


def test_the_defaults_read_plainly_cut_nothing_and_score_by_generation(tmp_path):
    task = get_task("sentiment")
    path = tmp_path / "dev.tsv"
    path.write_text("text\tlabel\ngood\t1\n", encoding="utf-8")
    rows = task.read(DataSpec(path=str(path)))
    assert [(r["text"], r["label"]) for r in rows] == [("good", "1")]
    assert task.truncate(rows, tok=None) == rows
    assert (task.max_source_tokens, task.questions, task.eval_mode) == (None, None, "generate")
    assert get_task("translation").cot_max_new_tokens is None and task.cot_max_new_tokens == 96
    with pytest.raises(NotImplementedError, match="task 'sentiment' is scored by generation"):
        task.loss_metrics(None, None, rows)
