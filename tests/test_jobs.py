"""The job queue (engine.jobs): one queue feeding one or several workers, model-type affinity, retries of jobs
whose worker was lost, bounds (429-style Busy) and shutdown. Jobs here are plain functions; no model."""

import threading
import time

import pytest

from engine.errors import Busy, Interrupted, ShuttingDown
from engine.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    Job,
    JobQueue,
    QueuedEvent,
    Retry,
    StepEvent,
    pick,
)

WAIT = 30  # seconds: generous bounds, never reached when things work


def blocker():
    """A job body that runs until released; `started` is set once it runs (and records its slot)."""
    started, release, seen = threading.Event(), threading.Event(), {}

    def work(ctx):
        seen["slot"] = ctx.slot
        started.set()
        assert release.wait(WAIT)
        return "released"

    return work, started, release, seen


def test_two_slots_run_two_jobs_at_once_and_positions_count_free_slots():
    q = JobQueue(slots=2)
    (w1, s1, r1, seen1), (w2, s2, r2, seen2) = blocker(), blocker()
    a, b = q.submit(w1, "u"), q.submit(w2, "u")
    assert s1.wait(WAIT) and s2.wait(WAIT)  # both run together
    assert {seen1["slot"], seen2["slot"]} == {0, 1}
    c = q.submit(lambda ctx: "third", "u")
    assert q.position(a) == 0 and q.position(c) == 1  # both slots busy: one to finish first
    r1.set()
    assert c.outcome() == "third" and a.outcome() == "released"
    r2.set()
    assert b.outcome() == "released" and q.position(b) == -1


def job(affinity, skipped=0, ran_on=None):
    j = Job("x", "u", "api", None, affinity=affinity)
    j.skipped = skipped
    if ran_on is not None:
        j.attempts, j.slot = 1, ran_on
    return j


def test_pick_prefers_the_loaded_model_type_without_starving_others():
    waiting = [job("base"), job("turbo"), job(None)]
    assert pick(waiting, 0, {0: "turbo"}, set()) == 1  # its worker holds turbo: take the turbo job first
    assert pick(waiting, 0, {0: "other"}, set()) == 0  # nothing for it: the oldest job
    assert pick(waiting, 0, {0: "other", 1: "base"}, {1}) == 1  # the oldest is for idle slot 1 (holds base)
    assert pick(waiting, 0, {0: "other", 1: "base"}, set()) == 0  # slot 1 is busy: take it
    assert pick([job("base")], 0, {1: "base"}, {1}) is None  # the only job is for the other idle worker
    assert pick([job("base", skipped=4), job("turbo")], 0, {0: "turbo"}, set()) == 0  # passed over too often
    assert pick([], 0, {0: "turbo"}, set()) is None


def test_pick_sends_a_job_whose_worker_was_lost_to_another_worker():
    retried = [job("turbo", ran_on=0)]
    assert pick(retried, 0, {0: "turbo"}, {1}) is None  # slot 1 is free: it runs it again
    assert pick(retried, 1, {}, {0}) == 0
    assert pick(retried, 0, {0: "turbo"}, set()) == 0  # nobody else free: its own slot, once restarted


def test_a_free_slot_holding_the_model_type_takes_its_job():
    q = JobQueue(slots=2)
    done = {}
    for slot_type in ("turbo", "base"):  # warm up: slot -> model type
        w, started, release, seen = blocker()
        j = q.submit(w, "u", affinity=slot_type)
        assert started.wait(WAIT)
        done[slot_type] = (j, release, seen)
    for _, release, _ in done.values():
        release.set()
    for j, _, _ in done.values():
        j.outcome()
    slots = {t: seen["slot"] for t, (_, _, seen) in done.items()}
    for _ in range(3):  # each type goes back to the worker that holds it
        for model_type in ("base", "turbo"):
            j = q.submit(lambda ctx: ctx.slot, "u", affinity=model_type)
            assert j.outcome() == slots[model_type]


def test_a_lost_worker_retries_the_job_once_then_fails_with_the_reason():
    q = JobQueue(slots=2)
    runs = []

    def flaky(ctx):
        runs.append(ctx.slot)
        if len(runs) == 1:
            raise Retry("the worker on cuda:0 stopped (exit code -9)")
        return "second run"

    j = q.submit(flaky, "u", retries=1)
    assert j.outcome() == "second run" and j.attempts == 2 and len(runs) == 2

    def always_lost(ctx):
        raise Retry("the worker on cuda:1 stopped (exit code -9)")

    j = q.submit(always_lost, "u", retries=1)
    with pytest.raises(Retry, match=r"cuda:1 stopped \(exit code -9\).*tried 2 times"):
        j.outcome()
    assert j.state == FAILED
    j = q.submit(always_lost, "u")  # no retries asked: fails at once
    with pytest.raises(Retry, match="tried 1 times"):
        j.outcome()


def test_bounds_answer_busy_and_close_refuses_and_cancels_waiting():
    q = JobQueue(max_per_owner=1, max_waiting=2)
    w, started, release, _ = blocker()
    running = q.submit(w, "a")
    assert started.wait(WAIT)
    waiting = q.submit(lambda ctx: 1, "a")
    with pytest.raises(Busy, match="at most 1"):
        q.submit(lambda ctx: 1, "a")  # a's own cap
    q.submit(lambda ctx: 1, "b")
    with pytest.raises(Busy, match="queue is full"):
        q.submit(lambda ctx: 1, "c")  # everyone's cap
    q.close("the server is shutting down")
    with pytest.raises(ShuttingDown, match="shutting down"):
        q.submit(lambda ctx: 1, "c")
    assert waiting.state == CANCELLED
    with pytest.raises(Interrupted, match="never started"):
        waiting.outcome()
    release.set()
    assert running.outcome() == "released" and running.state == DONE  # the running job finishes


def test_cancel_is_per_owner_with_several_slots():
    q = JobQueue(slots=2)
    s1 = threading.Event()
    w2, s2, r2, _ = blocker()

    def stoppable(ctx):
        s1.set()
        while True:
            ctx.check()  # where Stop takes effect
            threading.Event().wait(0.01)

    mine = q.submit(stoppable, "me")
    theirs = q.submit(w2, "them")
    assert s1.wait(WAIT) and s2.wait(WAIT)
    assert not q.cancel(mine.id, "them")  # not theirs to cancel
    assert q.stop("me")
    with pytest.raises(Interrupted):
        mine.outcome()
    r2.set()
    assert theirs.outcome() == "released"


# ---- one queue, one slot: order, owners, listeners ----------------------------------------------

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


def test_a_waiting_caller_asked_to_poll_hears_its_place_in_line_then_its_events():
    jobs, log, gate = JobQueue(), [], threading.Event()
    first = jobs.submit(blocking(gate, log, "first"), owner="ann")
    wait_running(jobs)
    stream = jobs.run(lambda ctx: (ctx.on_step(0, 0, 1, None), "mine")[1], owner="bob", poll=0.01)
    assert next(stream) == QueuedEvent(ahead=1)  # the running job is ahead of it
    gate.set()
    rest = list(stream)
    assert all(isinstance(e, QueuedEvent) for e in rest[:-2]) and isinstance(rest[-2], StepEvent)
    assert rest[-1] == "mine" and first.outcome() == "first"
    free = list(jobs.run(lambda ctx: "free", owner="bob", poll=0.01))  # nothing ahead: at most "0 ahead"
    assert free[-1] == "free" and all(e == QueuedEvent(ahead=0) for e in free[:-1])


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
    assert [e.done for e in items if isinstance(e, StepEvent)] == [1, 2, 3]
    assert StepEvent(run=2, step=1, total=4, latents=None).done == 10  # runs 0 and 1 done, then 2 steps of run 2

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
    with pytest.raises(Busy, match="at most 1"):
        jobs.submit(blocking(gate, [], "3"), owner="ann")
    jobs.submit(lambda ctx: None, owner="bob")  # others are not affected
    gate.set()
    first.outcome()
