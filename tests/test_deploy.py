"""docs/deploy: the compose file parses and agrees with the config code.

Nothing here starts containers; it checks what a typo would break in production: a variable
the config never reads (silently ignored), a config file that does not load, a Discord shard
served twice or by nobody, two processes polling one Telegram token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from common.config import ENV_OVERRIDES, Config, load_config

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
# Compose substitutes ${NAME}, ${NAME:?}, ${NAME:-default} from the host's environment.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def bot_services() -> dict[str, dict[str, Any]]:
    """The services that run `memebot run` (the image's entry point is memebot)."""
    services = compose()["services"]
    bots = {
        name: s
        for name, s in services.items()
        if str(s.get("image", "")).startswith("memebot") and s.get("command", [""])[-1] == "run"
    }
    assert bots, "no memebot services in compose.yaml"
    return bots


def service_config(service: dict[str, Any]) -> Config:
    """The config that service's process loads: its --config file (found through the volume that
    mounts it) and its environment, with the host's secrets stood in for."""
    command = service["command"]
    assert command[-1] == "run" and "--config" in command
    container_path = command[command.index("--config") + 1]
    mounts = dict(reversed(v.split(":")[:2]) for v in service["volumes"] if v.startswith("./"))
    host_file = DEPLOY / mounts[container_path]
    env = {name: INTERPOLATION.sub("stand-in", str(value)) for name, value in service["environment"].items()}
    return load_config(host_file, env=env, root=ROOT)


def test_compose_sets_only_variables_the_config_reads() -> None:
    for name, service in bot_services().items():
        unknown = set(service["environment"]) - set(ENV_OVERRIDES)
        assert not unknown, f"{name} sets {sorted(unknown)}, which common/config.py never reads"


def test_every_bot_process_loads_its_config_on_postgresql() -> None:
    for name, service in bot_services().items():
        config = service_config(service)
        assert config.storage.url.startswith("postgresql://"), name
        assert config.telegram.enabled or config.discord.enabled, f"{name} runs no front end"


def test_discord_shards_cover_every_id_once() -> None:
    discord = [service_config(s) for s in bot_services().values()]
    discord = [c for c in discord if c.discord.enabled]
    assert discord, "no Discord process"
    counts = {c.discord.shard_count for c in discord}
    assert len(counts) == 1, f"the processes disagree on the shard count: {counts}"
    count = counts.pop()
    ids = sorted(i for c in discord for i in c.discord.shard_ids)
    assert ids == list(range(count)), f"shard ids {ids} are not 0..{count - 1}, each once"
    # Discord requires sharding past 2,500 servers; the file is sized for 10,000 (docs/deploy.md).
    assert count >= 4


def test_telegram_polled_by_one_process_only() -> None:
    # A token has one update stream: two processes polling it would take each other's updates.
    # Several processes need webhook mode ([telegram] webhook_url), behind one reverse proxy.
    configs = {n: service_config(s).telegram for n, s in bot_services().items()}
    telegram = {n: c for n, c in configs.items() if c.enabled}
    assert telegram, "no Telegram process"
    if any(not c.webhook_url for c in telegram.values()):
        assert len(telegram) == 1, f"{sorted(telegram)} would all poll one token"


def test_postgres_connections_fit() -> None:
    from bot.storage_engines import POOL_SIZE

    postgres = compose()["services"]["postgres"]
    command = postgres.get("command", [])
    max_connections = 100  # PostgreSQL's default
    for arg in command:
        if arg.startswith("max_connections="):
            max_connections = int(arg.split("=", 1)[1])
    # Leave room for psql, backups and `memebot db` while the bots run.
    assert len(bot_services()) * POOL_SIZE <= max_connections - 10


def test_the_image_is_built_by_setup_sh() -> None:
    for name, service in bot_services().items():
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        dockerfile = (context / build["dockerfile"]).read_text(encoding="utf-8")
        assert "scripts/setup.sh" in dockerfile and (ROOT / "scripts" / "setup.sh").exists()


def test_the_model_service_runs_serve_model_and_every_bot_is_its_client() -> None:
    """The model service's command line is one `memebot serve-model` accepts, and every bot
    process's [model] endpoint is that service, on the port it listens on."""
    from cli.main import build_parser

    model = compose()["services"]["model"]
    args = build_parser().parse_args(model["command"])
    assert args.command == "serve-model" and args.host == "0.0.0.0"
    for name, service in bot_services().items():
        endpoint = service_config(service).model.endpoint
        assert endpoint == f"http://model:{args.port}", name
        assert service["depends_on"]["model"]["condition"] == "service_healthy", name
        assert str(args.port) in " ".join(model["healthcheck"]["test"])
