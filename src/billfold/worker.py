"""Running the sweeps (``billfold.kit.sweeps``): once, until idle, in a loop, in a thread of the API
process, or through Dramatiq on Redis or RabbitMQ; and moving the sandbox billing clock.

The database is the truth (DESIGN.md rule 7): a sweep claims its due rows with
``FOR UPDATE SKIP LOCKED`` (``kit.sweeps.claim_batch``), so running it twice at once, on one machine
or on ten, does each row once. That is why the schedule (when each sweep last ran) can live in
each process's memory: a sweep that runs twice finds nothing the second time.

Modes (``BILLFOLD_WORKER``, docs/operations.md#worker):

- ``embedded``: ``billfold serve`` runs the loop in a background thread. The default on SQLite
  with no broker: one command, one process.
- ``external``: ``billfold worker`` processes run it, on as many machines as needed. With
  ``BILLFOLD_BROKER_URL`` the loop sends one Dramatiq message per due sweep and Dramatiq
  consumers (``billfold worker --dramatiq``) run them; without one, the loop runs them itself.
  Dramatiq is the ``broker`` extra (``pip install 'billfold[broker]'``), imported only when a
  broker is used.
- ``off``: nothing runs them (tests; or an installation that runs ``billfold worker --once`` from cron).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from billfold.accounts.housekeeping import purge_sweep as purge_accounts
from billfold.analytics.jobs import take_nightly as take_analytics_snapshots
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.kit.db import create_engine, one_line, session_factory, transaction
from billfold.kit.errors import ConfigurationError, Conflict
from billfold.idempotency import purge_sweep as purge_idempotency_keys
from billfold.kit.sweeps import Context, Sweep
from billfold.mailer import deliver_mail
from billfold.notify.delivery import deliver_webhooks
from billfold.notify.delivery import purge_deliveries as purge_webhook_deliveries
from billfold.memberships.sweeps import expire as expire_memberships
from billfold.orders.sweeps import settle_unknown_order_payments
from billfold.payments.refunds import settle_pending_refunds
from billfold.subscriptions.sweeps import end_due_trials, renew_due_subscriptions, retry_past_due_subscriptions
from billfold.webhooks.processing import process_webhooks
from billfold.wiring import wire

if TYPE_CHECKING:
    import dramatiq

log = logging.getLogger("billfold.worker")

SWEEPS: tuple[Callable[[Context], int], ...] = (
    purge_accounts,
    purge_idempotency_keys,
    purge_webhook_deliveries,
    expire_memberships,
    settle_unknown_order_payments,
    settle_pending_refunds,
    process_webhooks,
    retry_past_due_subscriptions,
    renew_due_subscriptions,
    end_due_trials,
    take_analytics_snapshots,  # after the sweeps that change the day's figures
    deliver_webhooks,  # after the sweeps whose changes it tells of
    deliver_mail,  # last: a round sends the mail its sweeps wrote
)
"""Every sweep the worker runs, in the order a round runs them: one line each. Imported by name,
so a sweep that is gone is an ImportError at start, never one silently skipped
(tests/test_worker.py checks that each one runs, and that no ``@sweep`` is left out)."""

CLOCK_STEP = timedelta(days=1)
"""The largest step ``advance_clock`` moves time by before running every sweep until idle."""

DEFAULT_MAX_ROUNDS = 100


class SandboxOnly(Conflict):
    code = "sandbox_only"
    title = "Not in sandbox mode"


def load_sweeps() -> list[Sweep]:
    """The sweeps the worker runs (``SWEEPS``), in order."""
    return [registry.of(run) for run in SWEEPS]


def make_context(settings: Settings, engine: Engine | None = None) -> Context:
    """What the sweeps run with; wires the process first (``billfold.wiring``): every way of running
    the worker (``billfold worker``, embedded, Dramatiq, the clock) starts here."""
    from billfold.accounts.security import Security
    from billfold import mailer

    wire()
    engine = engine or create_engine(settings.database_url)
    sessions = session_factory(engine)
    mailer.configure(sessions, settings)  # links in mail written by sweeps; the mail.deliver sweep sends it
    return Context(sessions=sessions, settings=settings, security=Security.from_settings(settings))


def engine_of(context: Context) -> Engine:
    return context.sessions.kw["bind"]


class Schedule:
    """When each sweep last started, in this process; a sweep is due ``every`` after that
    (by the billing clock, so a moved sandbox clock makes sweeps due at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, datetime] = {}

    def due(self, sweep: Sweep, now: datetime) -> bool:
        with self._lock:
            last = self._last.get(sweep.name)
        return last is None or now - last >= sweep.every

    def mark(self, name: str, at: datetime) -> None:
        with self._lock:
            self._last[name] = at

    def unmark(self, name: str) -> None:
        """Make the sweep due at once."""
        with self._lock:
            self._last.pop(name, None)

    def forget(self) -> None:
        with self._lock:
            self._last.clear()


SCHEDULE = Schedule()
"""This process's schedule, used when a caller passes none."""


def run_sweep(context: Context, sweep: Sweep | str) -> int | None:
    """Run one sweep once; how much it did, or None when it failed (the failure is logged, and
    nothing else is stopped by it)."""
    if isinstance(sweep, str):
        sweep = registry.get(sweep)
    try:
        done = sweep.run(context)
    except Exception as error:
        log.error("sweep %s failed: %s: %s", sweep.name, type(error).__name__, one_line(error))
        log.debug("sweep %s failed", sweep.name, exc_info=True)
        return None
    if done:
        log.info("sweep %s: %d done", sweep.name, done)
    return int(done or 0)


DRAIN_SECONDS = 20.0
"""How long a round works through one draining sweep's backlog before the other sweeps get their
turn (the sweep is then due again at the next round, not after its ``every``)."""


def drain(context: Context, sweep: Sweep, *, seconds: float = DRAIN_SECONDS, stop: threading.Event | None = None) -> tuple[int | None, bool]:
    """Run a draining sweep (``Sweep.drain``) again and again while it reports work, for at most
    ``seconds``, on ``settings.worker_sweeps_at_once`` threads at once (one on SQLite): each run
    claims its own batch with SKIP LOCKED, so while one batch waits for its provider calls another
    is claimed or recorded. How much was done (None: every run failed), and whether work may be left."""
    deadline = time.monotonic() + seconds
    at_once = 1 if engine_of(context).dialect.name == "sqlite" else context.settings.worker_sweeps_at_once
    lock = threading.Lock()
    totals = {"done": 0, "runs": 0, "failed": 0, "left": False}

    def work() -> None:
        while True:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                with lock:
                    totals["left"] = True
                return
            done = run_sweep(context, sweep)
            with lock:
                totals["runs"] += 1
                totals["failed"] += done is None
                totals["done"] += done or 0
            if not done:
                return

    if at_once == 1:
        work()
    else:
        threads = [threading.Thread(target=work, name=f"{sweep.name}-{n}", daemon=True) for n in range(at_once)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    failed_all = totals["runs"] > 0 and totals["failed"] == totals["runs"]
    return (None if failed_all else int(totals["done"])), bool(totals["left"])


def _selected(names: Iterable[str] | None, sweeps: Sequence[Sweep] | None) -> list[Sweep]:
    chosen = list(sweeps) if sweeps is not None else load_sweeps()
    if names is not None:
        wanted = set(names)
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            raise ConfigurationError(f"no sweep named {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in wanted]
    return chosen


def run_sweeps(
    context: Context,
    *,
    names: Iterable[str] | None = None,
    sweeps: Sequence[Sweep] | None = None,
    schedule: Schedule | None = None,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Run each due sweep once, a draining one until its backlog is worked through (``drain``)
    (all registered ones, or those ``names``/``sweeps`` choose); how much each did, by name. A
    sweep that failed is logged and left out of the result."""
    schedule = schedule or SCHEDULE
    results: dict[str, int] = {}
    for sweep in _selected(names, sweeps):
        now = clock.now()
        if not schedule.due(sweep, now):
            continue
        schedule.mark(sweep.name, now)
        if sweep.drain:
            done, left = drain(context, sweep, stop=stop)
            if left:  # its backlog is not worked through: due again at the next round
                schedule.unmark(sweep.name)
        else:
            done = run_sweep(context, sweep)
        if done is not None:
            results[sweep.name] = done
    return results


def catch_up(
    context: Context, *, max_rounds: int = DEFAULT_MAX_ROUNDS, sweeps: Sequence[Sweep] | None = None
) -> dict[str, int]:
    """Run every sweep, round after round, until a round where none reports work; the total each
    did, by name (every sweep named, 0 included). Used after the clock moves, by tests and the
    demo. Stops after ``max_rounds`` (logged) in case a sweep always says it did something."""
    chosen = _selected(None, sweeps)
    totals = {s.name: 0 for s in chosen}
    for _ in range(max_rounds):
        busy = False
        for sweep in chosen:
            done = run_sweep(context, sweep)
            if done:
                totals[sweep.name] += done
                busy = True
        if not busy:
            return totals
    log.warning("catch-up stopped after %d rounds with work still reported", max_rounds)
    return totals


def heartbeat(context: Context) -> None:
    """Record that a worker ran a round (``instance_marks``; ``/healthz`` reports it). A failure
    is logged and stops nothing."""
    from billfold import instance

    try:
        with transaction(context.sessions) as session:
            instance.heartbeat(session)
    except Exception as error:
        log.error("cannot record the worker's heartbeat: %s", one_line(error))


# --- the billing clock ---------------------------------------------------------------------------


@dataclass
class ClockAdvance:
    """What ``advance_clock`` did: from when to when, in how many steps, and each sweep's total."""

    before: datetime
    after: datetime
    steps: int
    done: dict[str, int] = field(default_factory=dict)


def require_sandbox(settings: Settings) -> None:
    if not settings.sandbox:
        raise SandboxOnly(
            "the billing clock moves only in sandbox mode (BILLFOLD_SANDBOX=true); this installation runs on real time"
        )


def install_clock(settings: Settings, engine: Engine) -> clock.Clock:
    """The clock this process must use, put in place: in sandbox mode the database's billing
    clock; otherwise the system clock, after checking the database was never run ahead of it
    (a sandbox database's dates lie in the future: running it on real time would be wrong)."""
    if settings.sandbox:
        current = clock.get_clock()
        if isinstance(current, clock.DatabaseClock) and current.engine is engine:
            return current
        database_clock = clock.DatabaseClock(engine)
        clock.set_clock(database_clock)
        return database_clock
    offset = clock.read_offset_seconds(engine)
    if offset:
        raise ConfigurationError(
            f"this database's billing clock was moved {timedelta(seconds=offset)} ahead in sandbox mode; "
            "it runs only with BILLFOLD_SANDBOX=true"
        )
    return clock.get_clock()


def advance_clock(
    context: Context,
    by: timedelta | str,
    *,
    step: timedelta = CLOCK_STEP,
    sweeps: Sequence[Sweep] | None = None,
    on_step: Callable[[int, int, datetime], None] | None = None,
) -> ClockAdvance:
    """Move the whole system's time forward by ``by`` (sandbox mode only) and do everything that
    became due. Time moves in steps of at most ``step`` (a day), and every sweep runs until idle
    after each step, so sweeps see the due moments in order: a renewal due on day 3 happens on
    day 3 (give or take a step), and its next one on day 33, not both at the end."""
    require_sandbox(context.settings)
    delta = clock.parse_duration(by) if isinstance(by, str) else by
    if delta < timedelta(seconds=1):
        raise clock.InvalidInput("the clock only moves forward, by at least one second")
    if step < timedelta(seconds=1):
        raise ValueError("a step is at least a second")
    engine = engine_of(context)
    current = clock.get_clock()
    installed = isinstance(current, clock.DatabaseClock) and current.engine is engine
    database_clock = current if installed else clock.DatabaseClock(engine)
    assert isinstance(database_clock, clock.DatabaseClock)
    steps = math.ceil(delta / step)
    totals: Counter[str] = Counter({s.name: 0 for s in _selected(None, sweeps)})
    with nullcontext() if installed else clock.using(database_clock):
        database_clock.refresh()
        before = database_clock.now()
        remaining = delta
        for number in range(1, steps + 1):
            move = min(step, remaining)
            now = database_clock.advance(move)
            remaining -= move
            totals.update(catch_up(context, sweeps=sweeps))
            if on_step:
                on_step(number, steps, now)
        after = database_clock.now()
    log.info("billing clock moved %s ahead in %d steps, to %s", delta, steps, after.isoformat())
    return ClockAdvance(before=before, after=after, steps=steps, done=dict(totals))


# --- the loop --------------------------------------------------------------------------------------


class Runner:
    """The long-running loop: every ``tick`` seconds, run (or, with ``dispatch``, send to the
    broker) each sweep that is due by its ``every``."""

    def __init__(
        self,
        context: Context,
        *,
        tick: float,
        dispatch: Callable[[Sweep], None] | None = None,
        schedule: Schedule | None = None,
        sweeps: Sequence[Sweep] | None = None,
    ) -> None:
        self.context = context
        self.tick = tick
        self.dispatch = dispatch
        self.schedule = schedule or Schedule()
        self.sweeps = sweeps
        self.stop_event = threading.Event()

    def round(self) -> dict[str, int]:
        if self.dispatch is None:
            return run_sweeps(self.context, sweeps=self.sweeps, schedule=self.schedule, stop=self.stop_event)
        sent: dict[str, int] = {}
        for sweep in _selected(None, self.sweeps):
            now = clock.now()
            if not self.schedule.due(sweep, now):
                continue
            try:
                self.dispatch(sweep)
            except Exception as error:  # the broker is down: try again next tick
                log.error("cannot send sweep %s to the broker: %s", sweep.name, one_line(error))
                continue
            self.schedule.mark(sweep.name, now)
            sent[sweep.name] = 1
        return sent

    def run(self) -> None:
        """Loop until ``stop()``; a round in progress finishes first."""
        while not self.stop_event.is_set():
            try:
                self.round()
            except Exception as error:  # never let the loop die: the next tick tries again
                log.error("worker round failed: %s", one_line(error))
            heartbeat(self.context)
            self.stop_event.wait(self.tick)

    def stop(self) -> None:
        self.stop_event.set()


@contextmanager
def embedded(context: Context, *, tick: float, sweeps: Sequence[Sweep] | None = None) -> Iterator[Runner]:
    """The loop in a background thread of this process, for the block's duration (``billfold serve``
    in embedded mode). Stopping waits for the round in progress."""
    runner = Runner(context, tick=tick, sweeps=sweeps)
    thread = threading.Thread(target=runner.run, name="billfold-worker", daemon=True)
    thread.start()
    log.info("embedded worker started (every %ss)", tick)
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(timeout=60)
        log.info("embedded worker stopped")


# --- Dramatiq ----------------------------------------------------------------------------------------

ACTOR_NAME = "billfold.run_sweep"


BROKER_EXTRA = "pip install 'billfold[broker]'"


def _dramatiq_module(name: str) -> Any:
    """``import name`` from Dramatiq (an extra: only a broker needs it), or a ConfigurationError
    that says how to install it. Nothing imports Dramatiq until a broker is used."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigurationError(
            f"BILLFOLD_BROKER_URL needs Dramatiq and its broker client ({error.name or name} is not installed): "
            f"{BROKER_EXTRA}"
        ) from None


def make_broker(url: str) -> dramatiq.Broker:
    """A Dramatiq broker for ``redis://``/``rediss://`` or ``amqp://``/``amqps://`` URLs."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return _dramatiq_module("dramatiq.brokers.redis").RedisBroker(url=url)
    if scheme in ("amqp", "amqps"):
        return _dramatiq_module("dramatiq.brokers.rabbitmq").RabbitmqBroker(url=url)
    raise ConfigurationError(
        f"unsupported broker URL scheme {scheme!r}: BILLFOLD_BROKER_URL takes redis://… or amqp://…"
    )


class Dramatiq:
    """Billfold's one actor (``billfold.run_sweep``, taking a sweep's name) on a broker: the
    scheduler ``send``s, consumers (``consume``) run the sweep with this process's context."""

    def __init__(self, context: Context, url: str, queue: str) -> None:
        self.context = context
        self.queue = queue
        self.broker = make_broker(url)
        self.actor = _dramatiq_module("dramatiq").Actor(
            self._run,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=queue,
            priority=0,
            # A sweep that fails is not retried: the next tick sends it again, and a message
            # older than a few minutes is dropped (the schedule has sent a newer one by then).
            options={"max_retries": 0, "max_age": 15 * 60 * 1000, "time_limit": 60 * 60 * 1000},
        )

    def _run(self, name: str) -> None:
        try:
            sweep = registry.get(name)
        except KeyError as error:
            log.error("%s", error.args[0])
            return
        if sweep.drain:
            _, left = drain(self.context, sweep)
            if left:
                self.send(sweep)  # the rest of the backlog, as a message of its own
        else:
            run_sweep(self.context, sweep)

    def send(self, sweep: Sweep | str) -> None:
        self.actor.send(sweep if isinstance(sweep, str) else sweep.name)

    @contextmanager
    def consuming(self, *, threads: int = 4) -> Iterator[dramatiq.Worker]:
        """Dramatiq worker threads consuming the queue for the block's duration."""
        consumer = _dramatiq_module("dramatiq").Worker(self.broker, queues={self.queue}, worker_threads=threads)
        consumer.start()
        try:
            yield consumer
        finally:
            consumer.stop()

    def close(self) -> None:
        self.broker.close()


def dispatcher(context: Context) -> Dramatiq | None:
    """The Dramatiq dispatch for ``BILLFOLD_BROKER_URL``, or None without one."""
    settings = context.settings
    if not settings.broker_url:
        return None
    return Dramatiq(context, settings.broker_url, settings.broker_queue)


def describe(results: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in results.items()) or "no sweeps"
