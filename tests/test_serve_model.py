"""`memebot serve-model` (model/serve.py, Ray Serve) and the bot as its client (model/remote.py).

The Ray tests start the real command once for the module, as an operator would, on a local Ray
instance sized for two cores, with the shipped model; then generate through it with the client
the bot uses. Its queues are made tiny (4 requests per replica, 6 waiting in the proxy) so that
"busy" is reachable with two dozen requests. (Serve's proxy counts a request as queued until it
has handed it to a replica, even one with room: a queue smaller than a burst of requests turns
part of the burst away at once.) Without Ray installed they are skipped, loudly; the
client's own tests (errors, timeouts, its cap) run against a small aiohttp stand-in either way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.app import start_pool
from bot.frontend import StartError
from cli.main import main
from common.config import ENV_OVERRIDES, Config, load_config
from fakes.caption_model import config_for_tests
from model.pool import GenerationFailed, InvalidRequest, ModelPool, PoolBusy, PoolClosed, PoolTimeout
from model.remote import RemoteModel
from model.requests import GenerationRequest, ScoringRequest

ROOT = Path(__file__).resolve().parent.parent
HAS_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None
needs_ray = pytest.mark.skipif(
    not HAS_RAY,
    reason="RAY SERVE IS NOT INSTALLED: the model service (memebot serve-model) is NOT tested; "
    "pip install -e '.[serve]' (scripts/setup.sh does)",
)
if not HAS_RAY:  # said in the warnings summary too, which `pytest -q` shows, unlike skip reasons
    warnings.warn(needs_ray.kwargs["reason"], stacklevel=1)
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),  # Ray's own, on importing Serve
]

TEMPLATES = ("Change-My-Mind", "Drake-Hotline-Bling", "Two-Buttons")
# Long enough (many rows, long captions) to still be decoding when the test acts on it.
SLOW = GenerationRequest("Drake-Hotline-Bling", "when", method="sample", best_of=32, max_length=120, seed=1)


def quick(i: int, length: int = 24) -> GenerationRequest:
    return GenerationRequest(TEMPLATES[i % 3], f"{i} is", method="greedy", max_length=length)


def test_serve_model_help_lists_its_options(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        main(["serve-model", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--port", "--replicas", "--max-replicas", "--num-gpus", "--max-batch", "--queue-size"):
        assert option in out


# ---- the real service -----------------------------------------------------------------------


@dataclass
class Service:
    endpoint: str
    config: Config  # what the command was given
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`memebot serve-model` in a process of its own, until the module's tests are done."""
    if not HAS_RAY:
        pytest.skip("Ray Serve is not installed")
    tmp = tmp_path_factory.mktemp("serve-model")
    config_file = tmp / "serve.toml"
    # The shipped model on the CPU, one thread, no fused kernel: the same for the local pool the
    # test compares with, and nothing to compile on a fresh machine.
    config_file.write_text('[model]\ndevice = "cpu"\nthreads = 1\nfused_kernel = false\n')
    config = load_config(config_file, env={})
    if not config.checkpoint_path.exists():
        pytest.skip(f"no shipped model at {config.checkpoint_path}")
    log = tmp / "serve-model.log"
    command = [
        sys.executable, "-m", "cli.main", "serve-model", "--config", str(config_file),
        "--port", str(free_port()), "--ray-cpus", "2", "--max-ongoing", "4", "--queue-size", "6",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and not k.startswith("RAY_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        endpoint = wait_for_ready(process, log, timeout_s=90)
        yield Service(endpoint, config, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # It shut Serve and Ray down itself, and said so.
    assert "model service stopped" in log.read_text(errors="replace"), tail(log)


def wait_for_ready(process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"model service ready in .*: (http://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            pytest.fail(f"memebot serve-model exited with {process.returncode}:\n{tail(log)}")
        time.sleep(0.2)
    pytest.fail(f"memebot serve-model was not ready within {timeout_s} s:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
async def client(service: Service) -> AsyncIterator[RemoteModel]:
    client = RemoteModel.from_config(dataclasses.replace(service.config.model, endpoint=service.endpoint))
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def wait_for(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.1)
    return False


@needs_ray
async def test_greedy_captions_and_template_scores_are_the_local_pools(service: Service, client: RemoteModel):
    requests = [GenerationRequest(t, "pineapple on", method="greedy", max_length=40) for t in TEMPLATES[:2]]
    remote = [await client.generate(r) for r in requests]
    remote_scores = await client.score_templates("when the code works", TEMPLATES)
    config = service.config
    local = ModelPool.from_config(
        config.model, config.checkpoint_path, config.draft_path, None, config.lexicon_path
    )
    await local.start()
    try:
        assert client.model_id == local.model_id
        here = [await local.generate(r) for r in requests]
        here_scores = await local.score_templates("when the code works", TEMPLATES)
    finally:
        await local.close()
    for result in remote:
        assert result.captions[0].text.startswith("pineapple on") and len(result.captions[0].text) > 15
    assert [r.captions[0].boxes for r in remote] == [r.captions[0].boxes for r in here]
    assert remote_scores.templates == here_scores.templates and set(here_scores.templates) == set(TEMPLATES)
    assert remote_scores.scores == pytest.approx(here_scores.scores, abs=1e-4)


@needs_ray
async def test_concurrent_requests_are_decoded_together(client: RemoteModel):
    before = await client.server_stats()
    results = await asyncio.gather(*(client.generate(quick(i)) for i in range(4)))
    for i, result in enumerate(results):
        assert result.captions[0].text.startswith(f"{i} is")  # each caller got its own answer
    after = await client.server_stats()
    new_batches = after.batch_sizes - before.batch_sizes
    assert after.requests - before.requests == 4
    assert max(new_batches) > 1, new_batches  # @serve.batch put several in one batch
    assert after.batch_rows  # rows are counted as the pool counts them


@needs_ray
async def test_a_full_queue_answers_busy_and_the_rest_are_served(client: RemoteModel):
    # 4 in the replica, 6 waiting in the proxy: of 24 at once, some must be turned away.
    outcomes = await asyncio.gather(
        *(client.generate(quick(i, 48)) for i in range(24)), return_exceptions=True
    )
    busy = [o for o in outcomes if isinstance(o, PoolBusy)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert busy and served, outcomes
    assert len(busy) + len(served) == 24, [o for o in outcomes if isinstance(o, BaseException)]
    assert client.stats.rejected == len(busy)
    assert PoolBusy.user_message.startswith("The meme machine is busy")


@needs_ray
async def test_a_timeout_is_pool_timeout_and_the_service_drops_the_request(
    service: Service, client: RemoteModel
):
    before = await client.server_stats()
    impatient = RemoteModel(service.endpoint, timeout_s=0.5)
    await impatient.start()
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await impatient.generate(SLOW)
        assert time.monotonic() - started < 3
        assert impatient.stats.timed_out == 1
    finally:
        await impatient.close()

    async def dropped() -> bool:
        return (await client.server_stats()).cancelled > before.cancelled

    assert await wait_for(dropped), "the service never saw the caller leave"
    assert (await client.generate(quick(1))).captions  # and it still serves


@needs_ray
async def test_a_cancelled_caller_cancels_its_request_and_breaks_nothing(client: RemoteModel):
    before = await client.server_stats()
    task = asyncio.create_task(client.generate(SLOW))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.stats.cancelled == 1

    async def dropped() -> bool:
        return (await client.server_stats()).cancelled > before.cancelled

    assert await wait_for(dropped), "the service never saw the caller leave"
    # The same client (its connections) and the service go on serving.
    results = await asyncio.gather(*(client.generate(quick(i)) for i in range(3)))
    assert [r.captions[0].text[:4] for r in results] == ["0 is", "1 is", "2 is"]


@needs_ray
async def test_bad_requests_are_refused_without_failing_anyone(service: Service, client: RemoteModel):
    with pytest.raises(InvalidRequest):  # refused by the client, as the pool refuses it
        await client.generate(GenerationRequest("Two-Buttons", method="nonsense"))
    async with aiohttp.ClientSession() as session:  # and by the service, from any other caller
        async with session.post(service.endpoint + "/generate", json={"template": 3}) as response:
            assert response.status == 400
            assert "template: expected a string" in (await response.json())["detail"]
        async with session.post(service.endpoint + "/generate", data=b"{not json") as response:
            assert response.status == 400
    assert (await client.generate(quick(2))).captions


@needs_ray
async def test_the_bot_starts_as_a_client_of_the_service(service: Service, tmp_path: Path):
    config = config_for_tests(tmp_path)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, endpoint=service.endpoint))
    pool = await start_pool(config, notice=pytest.fail)  # no checkpoint here: none is needed
    assert isinstance(pool, RemoteModel)
    try:
        result = await pool.generate(
            GenerationRequest("Change-My-Mind", "tabs", method="greedy", max_length=30)
        )
        assert result.captions[0].text.startswith("tabs")
    finally:
        await pool.close()


@needs_ray
def test_gpu_replicas_and_autoscaling_reach_serves_own_config():
    """What this machine cannot run (no GPU, one host), checked as Serve parsed it: each replica
    asks Ray for a GPU (so Ray places it on a GPU host only) and the replica count autoscales."""
    from model.pool import GeneratorLoader
    from model.serve import ReplicaSettings, ServeOptions, build_app

    settings = ReplicaSettings(GeneratorLoader(Path("model.pt"), "cuda:0", 2), max_batch=256)
    options = ServeOptions(
        replicas=2, max_replicas=8, num_cpus=2, num_gpus=1, max_ongoing=512, queue_size=1000
    )
    deployment = build_app(settings, options)._bound_deployment  # Serve 2.60's own parsed options
    assert deployment.ray_actor_options == {"num_cpus": 2, "num_gpus": 1}
    assert (deployment.max_ongoing_requests, deployment.max_queued_requests) == (512, 1000)
    assert deployment.backpressure_config.status_code == 429  # "busy", told apart from 503
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (2, 2, 8)


def test_replicas_get_a_gpu_where_the_cluster_has_one():
    from cli.serve_model import replica_gpus, replica_loader

    def args(num_gpus: float | None = None) -> argparse.Namespace:
        return argparse.Namespace(num_gpus=num_gpus)

    auto, cpu = Config(), load_config(env={"MEMEBOT_DEVICE": "cpu"})
    assert replica_gpus(auto, args(), {"CPU": 16, "GPU": 4}) == 1.0
    assert replica_gpus(auto, args(), {"CPU": 2}) == 0.0
    assert replica_gpus(cpu, args(), {"CPU": 16, "GPU": 4}) == 0.0
    assert replica_gpus(auto, args(0.5), {"GPU": 1}) == 0.5  # two replicas share one GPU
    assert "no GPU" in str(replica_gpus(auto, args(1), {"CPU": 2}))
    # Ray shows a replica only its own GPU: the replica decodes on cuda:0 whichever it was given.
    assert replica_loader(auto, 1.0).device == "cuda:0" and replica_loader(auto, 0.0).device == "cpu"


# ---- the client alone, against a stand-in (no Ray needed) ------------------------------------


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """An HTTP server with the service's routes that answers /generate with the status asked
    for ({"status": 200} by default) after a delay; returns its URL and the dict to set."""
    behaviour = {"status": 200, "delay_ms": 0}

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"model_id": "stand-in"})

    async def generate(request: web.Request) -> web.Response:
        await asyncio.sleep(behaviour["delay_ms"] / 1000)
        if behaviour["status"] != 200:
            return web.json_response({"detail": "as told"}, status=behaviour["status"])
        prefix = (await request.json())["prefix"]
        return web.json_response(
            {"captions": [{"boxes": [prefix + " done"], "logprob": -1.0, "score": None}]}
        )

    app = web.Application()
    app.router.add_get("/info", info)
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", behaviour
    finally:
        await runner.cleanup()


async def test_the_client_maps_the_services_answers_to_the_pools_errors(stand_in):
    endpoint, behaviour = stand_in
    client = RemoteModel(endpoint, timeout_s=0.5, queue_size=2)
    await client.start()
    try:
        assert client.model_id == "stand-in"
        assert (await client.generate(GenerationRequest("x", "hi"))).captions[0].boxes == ["hi done"]
        for status, error in (
            (429, PoolBusy),
            (503, PoolBusy),
            (400, InvalidRequest),
            (500, GenerationFailed),
        ):
            behaviour["status"] = status
            with pytest.raises(error, match="as told"):
                await client.generate(GenerationRequest("x", "hi"))
        behaviour.update(status=200, delay_ms=2000)
        with pytest.raises(PoolTimeout):
            await client.generate(GenerationRequest("x", "hi"))
        # Its own cap: two in flight, a third is busy before it is sent.
        behaviour["delay_ms"] = 300
        outcomes = await asyncio.gather(
            *(client.generate(GenerationRequest("x", str(i))) for i in range(3)), return_exceptions=True
        )
        assert sum(isinstance(o, PoolBusy) for o in outcomes) == 1
    finally:
        await client.close()
    with pytest.raises(PoolClosed):
        await client.generate(GenerationRequest("x", "hi"))


async def test_a_bot_whose_model_service_is_down_refuses_to_start(tmp_path: Path):
    config = config_for_tests(tmp_path)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, endpoint=endpoint))
    with pytest.raises(StartError, match="cannot reach the model service"):
        await start_pool(config)


def test_the_wire_format_round_trips_requests_and_refuses_bad_fields():
    """What any caller may post is checked field by field before it can reach a batch: the types
    a request's fields have, the required ones present, nothing unknown."""
    from model import wire

    request = GenerationRequest("Two-Buttons", "tabs | spaces", seed=7, banned_words=("spam",), top_p=0.9)
    assert wire.request_from_json(wire.request_to_json(request)) == request
    assert (
        wire.request_from_json({"template": "x", "temperature": 1}).temperature == 1.0
    )  # JSON 1 is a number
    scoring = ScoringRequest("when the tests pass", ("Drake-Hotline-Bling",))
    assert wire.scoring_from_json(wire.scoring_to_json(scoring)) == scoring
    for bad, says in [
        ({"template": 3}, "template: expected a string"),
        ({"template": "x", "n": True}, "n: expected a whole number"),
        ({"template": "x", "banned_words": "spam"}, "banned_words: expected a list"),
        ({"template": "x", "seed": 1.5}, "seed: expected a whole number"),
        ({"template": "x", "gpu": 1}, "unknown GenerationRequest fields: gpu"),
        ({"prefix": "x"}, "needs template"),
        (["template"], "is a JSON object"),
    ]:
        with pytest.raises(InvalidRequest, match=says):
            wire.request_from_json(bad)
    with pytest.raises(InvalidRequest, match="templates\\[1\\]: expected a string"):
        wire.scoring_from_json({"text": "x", "templates": ["a", 2]})
    with pytest.raises(InvalidRequest, match="needs text"):
        wire.scoring_from_json({"templates": []})
