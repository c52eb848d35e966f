"""Host functions wait while a realloc runs (runtime/controller.py): what a device
runs now is its earliest unfinished task, and the driver tells it from the refs."""

from runtime.controller import Task, realloc_running


def _task(realloc: dict[str, int], calls: dict[str, int]) -> Task:
    """A task whose realloc and call refs are strings, each on a device."""
    return Task(None, 0, list(calls), list(realloc), {**realloc, **calls})


def test_a_realloc_runs_once_every_device_is_in_it():
    gen = _task({"r0": 0, "r1": 1}, {"g0": 0})
    assert realloc_running([gen], finished=set())
    assert realloc_running([gen], finished={"r0"})  # device 1 still exchanges
    assert not realloc_running([gen], finished={"r0", "r1"})  # now the call runs


def test_a_device_waiting_for_its_peers_is_not_an_exchange():
    train = _task({}, {"t0": 0, "t1": 1})
    gen = _task({"r0": 0, "r1": 1}, {"g0": 0})  # submitted after train
    assert not realloc_running([train, gen], finished=set())
    # device 0 is in the realloc, waiting for device 1, which still trains
    assert not realloc_running([train, gen], finished={"t0"})
    assert realloc_running([train, gen], finished={"t0", "t1"})


def test_no_realloc_in_flight():
    assert not realloc_running([], finished=set())
    assert not realloc_running([_task({}, {"c0": 0})], finished=set())
