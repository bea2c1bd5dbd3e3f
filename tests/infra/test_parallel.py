"""Tasks in worker processes (``lib.infra.parallel.run_tasks``): results in the tasks' order, a worker's error
raised here."""
import pytest


def _fails(value):
    if value == 2:
        raise ValueError(f"task value={value} is bad")
    return value * 10


def test_run_tasks_returns_in_order_and_raises_a_worker_error():
    from lib.infra.parallel import run_tasks
    assert run_tasks(_fails, [{"value": v} for v in (0, 1, 3)], workers=2) == [0, 10, 30]
    assert run_tasks(_fails, [{"value": 4}], workers=2) == [40]
    with pytest.raises(ValueError, match="task value=2 is bad"):
        run_tasks(_fails, [{"value": v} for v in (0, 2, 3)], workers=2)
