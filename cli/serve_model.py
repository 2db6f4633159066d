"""`memebot serve-model`: the caption model as a service that every bot process shares.

Starts (or joins) a Ray instance, deploys the model behind Ray Serve's HTTP proxy
(model/serve.py) and runs until Ctrl+C or SIGTERM. Bot processes then set `[model] endpoint` to
the URL it prints (or MEMEBOT_MODEL_ENDPOINT) and load no model themselves. The batching and
queue defaults are the `[model]` ones the in-process pool uses; timeouts are the clients' own
(`[model] timeout_s` in each bot). The service has no authentication: listen on an internal
network only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from common.config import Config
from model.pool import GeneratorLoader

if TYPE_CHECKING:
    from model.serve import ReplicaSettings, ServeOptions

SERVE_EXTRA = "pip install -e '.[serve]' (scripts/setup.sh does)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-model",
        help="serve the caption model to every bot process over HTTP (Ray Serve), until Ctrl+C",
        description="Deploys the configured model on Ray Serve with micro-batching; bots use it with "
        '[model] endpoint = "<the URL printed>". Batching and queue defaults come from [model]; the clients keep their own timeouts.',
    )
    where = p.add_argument_group("where")
    where.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all; default 127.0.0.1)"
    )
    where.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    where.add_argument(
        "--address",
        help="the Ray cluster to join (auto: the one `ray start` runs here; ray://... or host:port); "
        "default: start a Ray instance in this process, on this machine",
    )
    where.add_argument(
        "--ray-cpus",
        type=int,
        help="CPUs a Ray instance started here may use (default: all of this machine's)",
    )
    scale = p.add_argument_group("replicas")
    scale.add_argument(
        "--replicas", type=int, default=1, help="replicas at start, the fewest when autoscaling (default 1)"
    )
    scale.add_argument(
        "--max-replicas",
        type=int,
        default=0,
        help="autoscale up to this many replicas on load (default 0: a fixed number, --replicas)",
    )
    scale.add_argument(
        "--target-ongoing",
        type=float,
        default=16.0,
        help="autoscaling aims at this many requests in hand per replica (default 16)",
    )
    scale.add_argument("--num-cpus", type=float, help="CPUs reserved per replica (default: [model] threads)")
    scale.add_argument(
        "--num-gpus",
        type=float,
        help="GPUs per replica; > 0 places replicas on GPU hosts and decodes there (default: 1 if the "
        "Ray cluster has a GPU and [model] device is not cpu, else 0)",
    )
    batching = p.add_argument_group("batching and queueing (@serve.batch, Ray Serve's queues)")
    batching.add_argument(
        "--max-batch", type=int, help="rows decoded together at most (default: [model] max_batch)"
    )
    batching.add_argument(
        "--batch-wait-ms",
        type=float,
        help="how long a batch waits for company after its first request (default: [model] batch_wait_ms)",
    )
    batching.add_argument(
        "--max-ongoing",
        type=int,
        help="requests one replica takes at once, queued in it or decoding (default: 2 x max batch)",
    )
    batching.add_argument(
        "--queue-size",
        type=int,
        help="requests waiting in the proxy before bots are told busy, HTTP 429 (default: [model] queue_size)",
    )
    batching.add_argument(
        "--eager-batches",
        action="store_true",
        help="Serve's own batch forming (a batch forms when its window closes, even while another "
        "decodes) instead of the pool's (what queued during a batch forms the next); for comparison",
    )
    p.set_defaults(handler=serve_model_command)


def serve_model_command(config: Config, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    checkpoint = config.checkpoint_path
    if not checkpoint.exists():
        print(
            f"memebot serve-model: no model at {checkpoint} (`memebot train`, or [model] checkpoint)",
            file=sys.stderr,
        )
        return 1
    problems = check_arguments(config, args)
    if problems:
        print("memebot serve-model: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        import ray

        from model.serve import ReplicaSettings, ServeOptions, deploy, shutdown
    except ImportError as exc:
        print(f"memebot serve-model: Ray Serve is not installed ({exc}): {SERVE_EXTRA}", file=sys.stderr)
        return 1

    started = time.perf_counter()
    # No dashboard: it is a web UI of its own on another port, and takes a core's worth of start-up.
    ray.init(address=args.address, num_cpus=None if args.address else args.ray_cpus, include_dashboard=False)
    try:
        ray_s = time.perf_counter() - started
        gpus = replica_gpus(config, args, ray.cluster_resources())
        if isinstance(gpus, str):
            print(f"memebot serve-model: {gpus}", file=sys.stderr)
            return 1
        settings = ReplicaSettings(
            replica_loader(config, gpus),
            max_batch=args.max_batch or config.model.max_batch,
            batch_wait_ms=config.model.batch_wait_ms if args.batch_wait_ms is None else args.batch_wait_ms,
            hold_while_busy=not args.eager_batches,
            timeout_s=config.model.timeout_s,
        )
        options = ServeOptions(
            host=args.host,
            port=args.port,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            target_ongoing=args.target_ongoing,
            num_cpus=config.model.threads if args.num_cpus is None else args.num_cpus,
            num_gpus=gpus,
            max_ongoing=args.max_ongoing or 2 * settings.max_batch,
            queue_size=args.queue_size or config.model.queue_size,
        )
        try:
            endpoint = deploy(settings, options)
            print(
                f"model service ready in {time.perf_counter() - started:.1f} s (Ray {ray_s:.1f} s): {endpoint}\n"
                f"  {describe(settings, options)}\n"
                f'  bots: [model] endpoint = "{endpoint}" (or MEMEBOT_MODEL_ENDPOINT); Ctrl+C stops',
                flush=True,
            )
            wait_for_stop()
        finally:
            shutdown()
    finally:
        ray.shutdown()
    print("model service stopped", flush=True)
    return 0


def check_arguments(config: Config, args: argparse.Namespace) -> list[str]:
    problems = []
    if args.replicas < 1:
        problems.append("--replicas must be at least 1")
    if args.max_replicas and args.max_replicas < args.replicas:
        problems.append("--max-replicas must be 0 (no autoscaling) or at least --replicas")
    if args.max_batch is not None and args.max_batch < 1:
        problems.append("--max-batch must be at least 1")
    if args.max_ongoing is not None and args.max_ongoing < 1:
        problems.append("--max-ongoing must be at least 1")
    if args.queue_size is not None and args.queue_size < 1:
        problems.append("--queue-size must be at least 1")
    if args.batch_wait_ms is not None and args.batch_wait_ms < 0:
        problems.append("--batch-wait-ms must not be negative")
    if (args.num_gpus is not None and args.num_gpus < 0) or (args.num_cpus is not None and args.num_cpus < 0):
        problems.append("--num-cpus and --num-gpus must not be negative")
    return problems


def replica_gpus(config: Config, args: argparse.Namespace, cluster: dict[str, Any]) -> float | str:
    """GPUs per replica, or why not: what was asked, else one where the cluster has any."""
    available = float(cluster.get("GPU", 0))
    if args.num_gpus is not None:
        if args.num_gpus > 0 and not available:
            return f"--num-gpus {args.num_gpus:g}, but the Ray cluster has no GPU"
        return float(args.num_gpus)
    return 1.0 if available and config.model.device != "cpu" else 0.0


def replica_loader(config: Config, gpus: float) -> GeneratorLoader:
    """What each replica loads: the model as `memebot run` loads it, on the replica's GPU (Ray
    shows a replica only the GPUs it was given, so that is always cuda:0) or on its CPUs."""
    from bot.app import usable_draft, usable_lexicon

    device = "cuda:0" if gpus > 0 else "cpu"
    return GeneratorLoader.from_config(
        config.model,
        config.checkpoint_path,
        device,
        usable_draft(config),
        config.kernel_dir,
        usable_lexicon(config),
    )


def describe(settings: ReplicaSettings, options: ServeOptions) -> str:
    scaling = (
        f"{options.replicas}-{options.max_replicas} replicas (autoscaling, {options.target_ongoing:g} requests each)"
        if options.autoscaling
        else f"{options.replicas} replica(s)"
    )
    return (
        f"{scaling}, each {options.num_cpus:g} CPU, {options.num_gpus:g} GPU, on {settings.loader.device}; "
        f"batches up to {settings.max_batch} rows, wait {settings.batch_wait_ms:g} ms"
        f"{', eager' if not settings.hold_while_busy else ''}; "
        f"{options.max_ongoing} requests per replica, {options.queue_size} queued per proxy"
    )


def wait_for_stop() -> None:
    """Until SIGINT or SIGTERM (a container's stop), so that Serve and Ray are shut down cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
