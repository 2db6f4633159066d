"""Load and fault test: the whole bot under a crowd, through the fake Telegram server.

    .venv/bin/python -m bench.load [--commands 1000] [--users 100] [--chats 20] [--concurrency 50]
                                    [--checkpoint PATH] [--no-faults] [--real-model] [--endpoint URL]

The real python-telegram-bot front end, the real MemeService, ModelPool and SQLite serve
`/meme` commands from simulated users in group chats, mixed with 👍/👎 presses, bad input
and a burst of commands from one user. By default the model is the scripted test double
(fakes/caption_model.py); `--checkpoint` decodes with a real one. The run is done
twice: clean, then with faults injected (model batches raising, Bot API 500s and slow
replies, the database locked by another connection). Each prints p50/p95 latency, memes/s
and the accounting: every command answered (meme, busy or cooldown; never silence, never
"something went wrong"), and the database's meme and rating counts equal to what was sent
and accepted. tests/test_load.py runs a small version of the same.

`--real-model` serves the shipped checkpoint with the served config, as `memebot run` loads
it (one clean run, 250 commands unless --commands says otherwise), profiles it (cProfile of the
event loop's thread; the model worker's and the renderers' busy time), names the bottleneck,
then in the same process measures the two stages alone on the same work: the pool replaying
the very generation requests the bot made, at the same concurrency, no Telegram, no
rendering; and one renderer drawing the very (template, boxes) the bot drew. It prints the
full path's memes/s over the slower of the two (the goal: at least 0.7).

`--endpoint URL` (implies --real-model) does the same through the model service that
`memebot serve-model` runs at URL: the bot is its client (model/remote.py, as with `[model]
endpoint`), the model's busy time and batches come from the service's /stats, and the
"generation alone" replay goes through the service too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import itertools
import os
import pstats
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bot.app import open_service, usable_draft, usable_lexicon
from bot.render import Renderer
from bot.service import MemeService
from bot.telegram_app import SendRetry, TelegramFrontEnd, Timeouts
from common.catalog import Template
from common.config import Config
from common.config import load_config as load_served_config
from fakes.caption_model import ScriptedCaptions, config_for_tests
from fakes.telegram_server import Call, FakeTelegramServer
from model.pool import BatchGenerator, GeneratorLoader, ModelPool, PoolError, PoolStats, resolve_devices
from model.remote import RemoteModel
from model.requests import Abandoned, GenerationRequest, GenerationResult, ResultCallback, TemplateScores

FIRST_USER = 10_001
FIRST_CHAT = -100_001
# What users type that the bot must refuse politely (each answered, none a meme).
BAD_INPUTS = (
    "/caption ../../../etc/passwd hi",  # (/meme would caption it: a first word that is no template starts the caption)
    "/meme drake " + "x" * 400,
    "/meme " + "y" * 5000,
    "/meme drake \u200bsh1t\u200b happens",
    "/caption drake what the fuck | no",
    "/caption",
    "/caption drake \x00\x01\u202e",
    "/caption nosuchtemplatezzz a | b",
    "/settings temperature 99",
)


@dataclass(frozen=True)
class LoadPlan:
    commands: int = 1000  # /meme commands, spread over users and chats
    users: int = 100
    chats: int = 20
    concurrency: int = 50  # commands in flight at once
    ratings: int = 300  # 👍/👎 presses on memes already sent
    bad_inputs: int = 60
    burst: int = 30  # extra /meme commands sent at once by one user (most hit the rate limit)
    seed: int = 0
    # How long a user waits for an answer before it counts as silence. Longer than the bot's
    # own worst case (the model's 20 s timeout, then rendering and sending on a busy CPU): a
    # shorter wait called a meme that came at 31 s "never answered" while it was stored.
    answer_wait_s: float = 60.0


@dataclass(frozen=True)
class FaultPlan:
    model_fail_every: int = 0  # every n-th model batch raises (0: never)
    api_errors: int = 0  # Bot API 500 replies, spread over the run
    slow_replies: int = 0  # Bot API replies held back `slow_s` each
    slow_s: float = 0.5
    db_locks: int = 0  # times another connection holds the database's write lock
    db_lock_s: float = 0.5
    interval_s: float = 0.25  # between two injections

    @property
    def any(self) -> bool:
        return bool(self.model_fail_every or self.api_errors or self.slow_replies or self.db_locks)


FULL_FAULTS = FaultPlan(model_fail_every=25, api_errors=20, slow_replies=20, db_locks=4)


@dataclass
class LoadReport:
    sent: Counter[str] = field(default_factory=Counter)  # what was sent, by kind
    answers: Counter[str] = field(default_factory=Counter)  # first answer of each command, by kind
    latencies_s: list[float] = field(default_factory=list)  # /meme command -> first answer
    wall_s: float = 0.0
    meme_ids: set[int] = field(default_factory=set)  # memes the users received
    accepted_ratings: int = 0
    db_memes: int = 0
    db_ratings: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def problems(self) -> list[str]:
        """What breaks the promise: silence, crashes, lost or phantom memes and ratings."""
        found = []
        if self.answers["silence"]:
            found.append(f"{self.answers['silence']} commands got no answer")
        if self.answers["crash"]:
            found.append(f"{self.answers['crash']} commands ended in 'something went wrong'")
        if self.answers["other"]:
            found.append(f"{self.answers['other']} /meme commands got an unexpected reply")
        if self.db_memes != len(self.meme_ids):
            found.append(f"database has {self.db_memes} memes, users received {len(self.meme_ids)}")
        if self.db_ratings != self.accepted_ratings:
            found.append(f"database has {self.db_ratings} ratings, {self.accepted_ratings} were accepted")
        return found

    def summary(self, title: str) -> str:
        lat = sorted(self.latencies_s)
        p50 = statistics.median(lat) * 1000 if lat else 0.0
        p95 = lat[int(0.95 * (len(lat) - 1))] * 1000 if lat else 0.0
        lines = [
            f"== {title}",
            f"sent: {dict(self.sent)}",
            f"answers: {dict(self.answers)}",
            f"latency /meme: p50 {p50:.0f} ms, p95 {p95:.0f} ms; {len(self.meme_ids) / self.wall_s:.1f} memes/s"
            f" ({len(self.meme_ids)} memes in {self.wall_s:.1f} s)",
            f"database: {self.db_memes} memes (received {len(self.meme_ids)}), {self.db_ratings} ratings"
            f" (accepted {self.accepted_ratings})",
        ]
        if self.faults:
            lines.append(f"faults injected: {dict(self.faults)}")
        lines.append("accounting: OK" if not self.problems else "PROBLEMS: " + "; ".join(self.problems))
        return "\n".join(lines)


class FlakyGenerator:
    """Wraps a BatchGenerator so every n-th batch raises, as a crashing worker would."""

    def __init__(self, inner: BatchGenerator, fail_every: int) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.fail_every = fail_every
        self.failures = 0
        self._batches = itertools.count(1)
        self._lock = threading.Lock()

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        with self._lock:
            fail = self.fail_every > 0 and next(self._batches) % self.fail_every == 0
            self.failures += fail
        if fail:
            raise RuntimeError("injected model failure")
        return self.inner.generate_batch(requests, on_result, abandoned)

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        return self.inner.score_templates(text, templates)  # picks are not where faults are injected


def classify(call: Call) -> str:
    """What a user got back for a command."""
    if call.method == "sendPhoto":
        return "meme"
    text = str(call.params.get("text", ""))
    if "went wrong on my side" in text:
        return "crash"
    if "Slow down" in text or "faster than I can" in text:
        return "cooldown"
    if "busy" in text or "try again" in text.lower():
        return "busy"
    return "other"


def load_config(workdir: Path) -> Config:
    # Limits a busy group could live with: a user's ~10 memes fit, the burst user's 30 do not.
    return config_for_tests(
        workdir, user_rate_per_minute=60, user_burst=15, chat_rate_per_minute=3000, chat_burst=200
    )


@asynccontextmanager
async def running_bot(
    config: Config,
    generator: BatchGenerator,
    server: FakeTelegramServer,
    pool: ModelPool | RemoteModel | None = None,
) -> AsyncIterator[MemeService]:
    """The bot on `pool` (started, owned by the caller) or on a pool of its own around `generator`."""
    owns_pool = pool is None
    if pool is None:
        pool = ModelPool([lambda: generator], queue_size=config.model.queue_size, timeout_s=30.0)
        await pool.start(warmup=False)
    telegram = server.bot_config()
    try:
        async with open_service(config, pool=pool) as service:
            bot = TelegramFrontEnd(
                service,
                telegram,
                timeouts=Timeouts(connect_s=5.0, read_s=5.0, write_s=5.0, media_write_s=5.0, pool_s=5.0),
                retry=SendRetry(attempts=4, backoff_s=0.1),
            )
            await bot.start()
            try:
                yield service
            finally:
                await bot.close()
    finally:
        if owns_pool:
            await pool.close()


def hold_write_lock(database: Path, seconds: float) -> None:
    """Another process's long transaction: take the write lock, keep it, let go."""
    conn = sqlite3.connect(database, timeout=10.0, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def inject_faults(
    faults: FaultPlan, server: FakeTelegramServer, database: Path, report: LoadReport
) -> None:
    kinds = ["api_error"] * faults.api_errors + ["slow"] * faults.slow_replies + ["db_lock"] * faults.db_locks
    random.Random(1).shuffle(kinds)
    methods = itertools.cycle(("sendPhoto", "sendMessage", "answerCallbackQuery"))
    for kind in kinds:
        await asyncio.sleep(faults.interval_s)
        if kind == "api_error":
            server.fail_next(next(methods), status=500)
        elif kind == "slow":
            server.delay_next(next(methods), faults.slow_s)
        else:
            await asyncio.to_thread(hold_write_lock, database, faults.db_lock_s)
        report.faults[kind] += 1


async def run_load(
    plan: LoadPlan,
    faults: FaultPlan,
    workdir: Path,
    generator: BatchGenerator | None = None,
    pool: ModelPool | RemoteModel | None = None,
    on_service: Callable[[MemeService], None] | None = None,
) -> LoadReport:
    """One run; `generator` defaults to the scripted caption model. A started `pool` (the
    caller's, left running) replaces the generator; `on_service(service)` is called once the bot
    is up (the real-model run instruments the renderer there)."""
    config = load_config(workdir)
    flaky = FlakyGenerator(generator or ScriptedCaptions(delay_s=0.005), faults.model_fail_every)
    report = LoadReport()
    rng = random.Random(plan.seed)
    chats = [FIRST_CHAT - i for i in range(plan.chats)]
    users = [FIRST_USER + i for i in range(plan.users)]
    sent_memes: list[dict] = []  # the meme messages users can press buttons on
    pressed: set[tuple[int, int]] = set()  # (meme id, user): each presses a meme once

    async with FakeTelegramServer(token="123456:LOAD-TEST-TOKEN") as server:
        async with running_bot(config, flaky, server, pool) as service:
            database = service.storage.path
            if on_service is not None:
                on_service(service)

            async def command(text: str, kind: str, user: int, chat: int) -> None:
                report.sent[kind] += 1
                message = server.send_text(text, chat_id=chat, user_id=user)
                start = time.monotonic()
                answers = await server.wait_answer(server.message_key(message), timeout=plan.answer_wait_s)
                if answers is None:
                    report.answers["silence"] += 1
                    return
                first = answers[0]
                got = classify(first)
                if kind != "meme" and got not in ("crash", "meme"):
                    got = "refused"  # bad input: any polite reply is right
                report.answers[got] += 1
                if kind == "meme":
                    report.latencies_s.append(first.at - start)
                if first.method == "sendPhoto":
                    meme = int(first.keyboard[0][0]["callback_data"].split(":")[1])
                    report.meme_ids.add(meme)
                    sent_memes.append(server.message_of(first))

            async def press() -> None:
                for _ in range(20):  # find a (meme, user) pair not pressed yet
                    if not sent_memes:
                        await asyncio.sleep(0.05)
                        continue
                    message, user = rng.choice(sent_memes), rng.choice(users)
                    meme = int(
                        message["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1]
                    )
                    if (meme, user) not in pressed:
                        break
                else:
                    return
                pressed.add((meme, user))
                report.sent["rating"] += 1
                vote = rng.choice((1, -1))
                query = server.press(message, f"v:{meme}:{vote}", user_id=user)
                answers = await server.wait_answer(server.query_key(query), timeout=plan.answer_wait_s)
                if answers is None:
                    report.answers["silence"] += 1
                elif "went wrong" in str(answers[0].params.get("text", "")):
                    report.answers["crash"] += 1
                else:
                    report.answers["rated"] += 1
                    # The answer shows the new counts; a refusal (an alert) does not.
                    report.accepted_ratings += str(answers[0].params.get("text", "")).startswith("👍")

            jobs = []
            for i in range(plan.commands):
                template = rng.choice(("", "drake", "change-my-mind", "two-buttons", "distracted boyfriend"))
                # Two boxes only where the template has two (Change My Mind has one sign: a second
                # box there is refused, not merged).
                two = "me | also me" if template != "change-my-mind" else "me, also me"
                prefix = rng.choice(("", "", "when the", two))
                jobs.append(
                    lambda t=template, p=prefix, i=i: command(
                        f"/meme {t} {p}".strip(), "meme", users[i % plan.users], chats[i % plan.chats]
                    )
                )
            jobs += [press] * plan.ratings
            jobs += [
                lambda i=i: command(
                    BAD_INPUTS[i % len(BAD_INPUTS)], "bad_input", rng.choice(users), rng.choice(chats)
                )
                for i in range(plan.bad_inputs)
            ]
            rng.shuffle(jobs)
            # Ratings need memes to press on: hold them back a little.
            jobs.sort(key=lambda job: job is press and rng.random() < 0.5)
            burst_user, burst_chat = users[0], chats[0]
            queue: asyncio.Queue = asyncio.Queue()
            for job in jobs:
                queue.put_nowait(job)

            async def worker() -> None:
                while not queue.empty():
                    await queue.get_nowait()()

            started = time.monotonic()
            injector = asyncio.create_task(inject_faults(faults, server, database, report))
            burst = [command("/meme drake", "meme", burst_user, burst_chat) for _ in range(plan.burst)]
            await asyncio.gather(*burst, *(worker() for _ in range(plan.concurrency)))
            report.wall_s = time.monotonic() - started
            injector.cancel()
            # Answered is not finished: the last memes' message ids are written just after sending.
            await asyncio.sleep(0.2)

    conn = sqlite3.connect(database)
    try:
        report.db_memes = conn.execute("SELECT COUNT(*) FROM memes").fetchone()[0]
        report.db_ratings = conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    finally:
        conn.close()
    report.faults["model_batches_failed"] = flaky.failures
    return report


# ---- the whole path with the real model ---------------------------------------------------------


class RecordingGenerator:
    """Wraps the real generator in the pool's worker: keeps every generation request the bot
    made (replayed alone afterwards, so both measure the same work) and the worker's busy time."""

    def __init__(self, inner: BatchGenerator) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.requests: list[GenerationRequest] = []
        self.busy_s = 0.0  # wall time inside the model, generation and template scoring
        self.batches = 0
        self.scorings = 0
        self.recording = False  # off for the warm-up and the replay

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        # One worker thread calls this (one device): no lock needed for the counters.
        if self.recording:
            self.requests.extend(requests)
            self.batches += 1
        started = time.perf_counter()
        try:
            return self.inner.generate_batch(requests, on_result, abandoned)
        finally:
            if self.recording:
                self.busy_s += time.perf_counter() - started

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        started = time.perf_counter()
        try:
            return self.inner.score_templates(text, templates)
        finally:
            if self.recording:
                self.scorings += 1
                self.busy_s += time.perf_counter() - started


class RecordingRemote(RemoteModel):
    """The client of the model service (--endpoint), recording like RecordingGenerator: the
    generation requests the bot made, and from the service's /stats the batches, template
    scorings and busy time between begin() and end()."""

    def __init__(self, endpoint: str, **options: float) -> None:
        super().__init__(endpoint, **options)  # type: ignore[arg-type]
        self.requests: list[GenerationRequest] = []
        self.recording = False
        self.busy_s = 0.0
        self.batches = 0
        self.scorings = 0
        self._before = PoolStats()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.recording:
            self.requests.append(request)
        return await super().generate(request)

    async def begin(self) -> None:
        self._before = await self.server_stats()
        self.recording = True

    async def end(self) -> None:
        self.recording = False
        after = await self.server_stats()
        self.busy_s = after.busy_s - self._before.busy_s
        self.batches = after.batches - self._before.batches
        self.scorings = after.scored - self._before.scored


@dataclass
class RenderLog:
    """Every render the bot did (template, boxes, keyword options) and the time they took;
    renders run in asyncio.to_thread's threads, hence the lock."""

    calls: list[tuple[Template, list[str], dict[str, object]]] = field(default_factory=list)
    busy_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def instrument(self, service: MemeService) -> None:
        original = service.renderer.render

        def render(template: Template, boxes: Sequence[str], **options: object) -> object:
            started = time.perf_counter()
            try:
                return original(template, boxes, **options)  # type: ignore[arg-type]
            finally:
                with self.lock:
                    self.calls.append((template, list(boxes), options))
                    self.busy_s += time.perf_counter() - started

        service.renderer.render = render  # type: ignore[method-assign]  # the instance's, this run only


def served_pool(served: Config) -> tuple[ModelPool, list[RecordingGenerator]]:
    """The pool `memebot run` starts (bot/app.py start_pool, ModelPool.from_config), with the
    generator wrapped for recording; the list holds it once the worker has loaded it."""
    devices = resolve_devices(served.model.device)
    if len(devices) != 1:
        raise SystemExit(f"--real-model measures one worker; [model] device gives {devices}")
    loader = GeneratorLoader.from_config(
        served.model,
        served.checkpoint_path,
        devices[0],
        usable_draft(served),
        served.kernel_dir,
        usable_lexicon(served),
    )
    recording: list[RecordingGenerator] = []

    def load() -> BatchGenerator:
        recording.append(RecordingGenerator(loader()))
        return recording[0]

    pool = ModelPool(
        [load],
        max_batch=served.model.max_batch,
        batch_wait_ms=served.model.batch_wait_ms,
        queue_size=served.model.queue_size,
        timeout_s=served.model.timeout_s,
    )
    return pool, recording


async def replay_generation(
    pool: ModelPool | RemoteModel, requests: list[GenerationRequest], concurrency: int
) -> tuple[float, int]:
    """Seconds for the pool to decode `requests` with `concurrency` callers, each sending its
    next as soon as it has its answer: generation alone, no Telegram, no rendering. Also how
    many failed (timed out under the pool's timeout)."""
    todo = list(reversed(requests))
    failed = 0

    async def caller() -> None:
        nonlocal failed
        while todo:
            try:
                await pool.generate(todo.pop())
            except PoolError:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, failed


def replay_renders(served: Config, calls: list[tuple[Template, list[str], dict[str, object]]]) -> float:
    """Seconds for one fresh renderer (as open_service builds it) to draw the same memes one
    after another in this thread, after one warm-up render of each template."""
    renderer = Renderer(
        served.template_images_dir,
        max_side=served.render.max_side,
        fallback_fonts=[served.resolve(p) for p in served.render.fallback_fonts],
        uppercase=served.render.uppercase,
    )
    for template in {id(t): t for t, _, _ in calls}.values():
        renderer.render(template, [])
    started = time.perf_counter()
    for template, boxes, options in calls:
        renderer.render(template, boxes, **options)  # type: ignore[arg-type]
    return time.perf_counter() - started


def top_sinks(profile: cProfile.Profile, n: int = 12) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(n)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


async def real_model_run(plan: LoadPlan, workdir: Path, endpoint: str = "") -> bool:
    """The whole path on the shipped model, profiled, then each stage alone. True if all is well.
    `endpoint`: through the model service there instead of a pool in this process."""
    served = load_served_config()
    if endpoint:
        served = dataclasses.replace(served, model=dataclasses.replace(served.model, endpoint=endpoint))
    elif not served.checkpoint_path.exists():
        raise SystemExit(f"no model at {served.checkpoint_path}")
    if served.generation != Config().generation:
        # run_load's service is built from the defaults (with the load test's limits and paths).
        print("note: the config file's [generation] differs from the defaults; the run uses the defaults")
    pool: ModelPool | RecordingRemote
    generator: RecordingGenerator | RecordingRemote
    if endpoint:
        pool = generator = RecordingRemote(
            endpoint, timeout_s=served.model.timeout_s, queue_size=served.model.queue_size
        )
        await pool.start()
        info = pool.info
        where = (
            f"the model service at {endpoint}: device {info.get('device')}, max_batch {info.get('max_batch')}, "
            f"batch wait {info.get('batch_wait_ms')} ms, replica {info.get('replica')}"
        )
        decoding = "model decoding (the service's replica; /stats)"
    else:
        pool, loaded = served_pool(served)
        await pool.start()  # with the warm-up `memebot run` does (kernel load, first pass)
        generator = loaded[0]
        where = f"device {served.model.device}, threads {served.model.threads}, max_batch {served.model.max_batch}"
        decoding = "model decoding (the pool's one worker)"
    renders = RenderLog()
    profile = cProfile.Profile()
    try:
        if isinstance(generator, RecordingRemote):
            await generator.begin()
        generator.recording = True
        loop_cpu, process_cpu = time.thread_time(), time.process_time()
        profile.enable()  # this thread is the event loop's: bot, fake Bot API server and clients
        report = await run_load(plan, FaultPlan(), workdir, pool=pool, on_service=renders.instrument)
        profile.disable()
        loop_cpu, process_cpu = time.thread_time() - loop_cpu, time.process_time() - process_cpu
        generator.recording = False
        if isinstance(generator, RecordingRemote):
            await generator.end()
        requests = list(generator.requests)
        # Capacity, not goodput: 50 best-of-8 requests at once queue for longer than the served
        # 20 s, and a request that times out is abandoned half-decoded. The full path's timeouts
        # show in its "busy" answers; here every request is decoded to the end.
        pool.timeout_s = 600.0
        gen_alone_s, gen_failed = await replay_generation(pool, requests, plan.concurrency)
    finally:
        await pool.close()
    render_alone_s = await asyncio.to_thread(replay_renders, served, renders.calls)

    memes = len(report.meme_ids)
    wall = report.wall_s
    full_rate = memes / wall
    # Each stage alone as memes/s: one meme is one served reply (a best-of-8 request) and one
    # render. The replay includes the requests of users who were then told "busy" (timed out).
    gen_rate = (len(requests) - gen_failed) / gen_alone_s
    render_rate = len(renders.calls) / render_alone_s
    slower = min(gen_rate, render_rate)
    print(
        report.summary(
            f"real model ({served.checkpoint_path.name}, served config), concurrency {plan.concurrency}"
        )
    )
    print(
        f"model: {pool.model_id}; {where}, best_of {served.generation.best_of}; "
        f"{len(requests)} generation requests in {generator.batches} batches "
        f"(mean {len(requests) / max(1, generator.batches):.1f}), {generator.scorings} template scorings; "
        f"{len(renders.calls)} renders; {len(requests) / max(1, memes):.1f} generation requests per meme"
        f" delivered (the others timed out in the queue: those users were told busy)"
    )
    print(
        "\n-- profile: event loop thread (cProfile, top by own time; epoll's poll is the loop idle) --\n"
        + top_sinks(profile)
    )
    shares = {
        decoding: generator.busy_s / wall,
        "event loop thread (bot + fake Bot API + clients)": loop_cpu / wall,
        "rendering (asyncio.to_thread workers)": renders.busy_s / wall,
    }
    cores = os.cpu_count() or 1
    print("-- where the run's wall time went (busy seconds / wall seconds) --")
    for name, share in shares.items():
        print(f"  {name:<50} {100 * share:5.0f}%")
    print(f"  {'whole process CPU':<50} {100 * process_cpu / wall:5.0f}% of one core ({cores} cores)")
    name, share = max(shares.items(), key=lambda item: item[1])
    print(f"bottleneck: {name}, busy {100 * share:.0f}% of the run")
    print(
        f"\n-- alone, same process, same work --\n"
        f"generation alone: {len(requests)} requests at concurrency {plan.concurrency} in {gen_alone_s:.1f} s"
        f": {gen_rate:.1f} replies/s ({gen_failed} timed out)\n"
        f"render alone: {len(renders.calls)} renders in one thread in {render_alone_s:.2f} s"
        f": {render_rate:.0f} memes/s\n"
        f"full path {full_rate:.1f} memes/s = {full_rate / slower:.2f} x the slower stage alone"
        f" ({'generation' if gen_rate <= render_rate else 'rendering'}, {slower:.1f} memes/s); goal >= 0.70"
    )
    return not report.problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, help="/meme commands (default 1000; --real-model: 250)")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--checkpoint", type=Path, help="decode with this real model instead of the scripted one"
    )
    parser.add_argument("--no-faults", action="store_true", help="skip the run with faults injected")
    parser.add_argument(
        "--real-model",
        action="store_true",
        help="the shipped model with the served config, profiled, against generation and rendering alone",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="--real-model through the model service `memebot serve-model` runs at URL (as [model] endpoint)",
    )
    args = parser.parse_args()
    if args.real_model or args.endpoint:
        # Sized for minutes on two CPU cores (~10 memes/s): ratings and bad input scaled down alike.
        commands = args.commands or 250
        plan = LoadPlan(
            commands=commands,
            users=args.users,
            chats=args.chats,
            concurrency=args.concurrency,
            ratings=commands // 4,
            bad_inputs=commands // 20,
        )
        with tempfile.TemporaryDirectory() as tmp:
            ok = asyncio.run(real_model_run(plan, Path(tmp), args.endpoint or ""))
        raise SystemExit(0 if ok else 1)
    plan = LoadPlan(
        commands=args.commands or 1000, users=args.users, chats=args.chats, concurrency=args.concurrency
    )

    def generator() -> BatchGenerator | None:
        if args.checkpoint is None:
            return None
        from model.generate import load_generator

        return load_generator(args.checkpoint)

    runs = [("clean", FaultPlan())] + ([] if args.no_faults else [("with faults", FULL_FAULTS)])
    failed = False
    for title, faults in runs:
        with tempfile.TemporaryDirectory() as tmp:
            report = asyncio.run(run_load(plan, faults, Path(tmp), generator()))
        print(report.summary(title), flush=True)
        failed |= bool(report.problems)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
