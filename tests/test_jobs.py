"""The engine's one job queue: one job at a time in submission order, positions, owners' cancel and stop."""

import threading
import time

import pytest

from engine.errors import Interrupted, SettingsError
from engine.jobs import JobQueue, StepEvent


def wait_running(jobs: JobQueue) -> None:
    deadline = time.monotonic() + 10
    while jobs.running is None and time.monotonic() < deadline:
        time.sleep(0.001)


def blocking(gate: threading.Event, log: list, name: str):
    def work(ctx):
        log.append(f"{name} start")
        while not gate.wait(0.01):
            ctx.check()
        log.append(f"{name} end")
        return name
    return work


def test_jobs_run_one_at_a_time_in_order_with_positions():
    jobs, log, gate = JobQueue(), [], threading.Event()
    a = jobs.submit(blocking(gate, log, "a"), owner="ann")
    b = jobs.submit(blocking(gate, log, "b"), owner="bob")
    c = jobs.submit(blocking(gate, log, "c"), owner="bob")
    wait_running(jobs)
    assert [jobs.position(j) for j in (a, b, c)] == [0, 1, 2]
    gate.set()
    assert [j.outcome() for j in (a, b, c)] == ["a", "b", "c"]
    assert log == ["a start", "a end", "b start", "b end", "c start", "c end"]
    assert jobs.position(a) == -1


def test_only_the_owner_cancels_and_stop_ends_queued_and_running_jobs():
    jobs, log, gate = JobQueue(), [], threading.Event()
    running = jobs.submit(blocking(gate, log, "run"), owner="ann")
    queued = jobs.submit(blocking(gate, log, "queued"), owner="ann")
    other = jobs.submit(lambda ctx: "other", owner="bob")
    wait_running(jobs)
    assert jobs.cancel(running.id, "bob") is False  # not bob's
    assert jobs.stop("ann") is True
    with pytest.raises(Interrupted):
        running.outcome()
    with pytest.raises(Interrupted):
        queued.outcome()
    assert other.outcome() == "other" and "queued start" not in log
    assert (running.state, queued.state, other.state) == ("cancelled", "cancelled", "done")
    assert jobs.stop("ann") is False  # nothing left


def test_events_stream_then_result_and_errors_reach_the_caller():
    jobs = JobQueue()

    def work(ctx):
        for i in range(3):
            ctx.on_step(0, i, 3, None)
        return 42

    items = list(jobs.run(work, owner="x"))
    assert [e.step for e in items if isinstance(e, StepEvent)] == [0, 1, 2] and items[-1] == 42

    def broken(ctx):
        raise ValueError("bad thing")

    with pytest.raises(ValueError, match="bad thing"):
        list(jobs.run(broken, owner="x"))
    assert jobs.run(lambda ctx: "next", owner="x").__next__() == "next"  # the worker goes on


def test_a_listener_that_goes_away_cancels_its_job():
    jobs, gate = JobQueue(), threading.Event()

    def work(ctx):
        ctx.on_step(0, 0, 1, None)
        while not gate.wait(0.01):
            ctx.check()

    stream = jobs.run(work, owner="page")
    next(stream)  # the first step arrived; then the page closes
    job = jobs.running
    stream.close()
    with pytest.raises(Interrupted):
        job.outcome()


def test_queued_jobs_per_owner_are_capped():
    jobs, gate = JobQueue(max_per_owner=1), threading.Event()
    first = jobs.submit(blocking(gate, [], "1"), owner="ann")
    wait_running(jobs)
    jobs.submit(blocking(gate, [], "2"), owner="ann")  # one waiting is fine
    with pytest.raises(SettingsError, match="at most 1"):
        jobs.submit(blocking(gate, [], "3"), owner="ann")
    jobs.submit(lambda ctx: None, owner="bob")  # others are not affected
    gate.set()
    first.outcome()
