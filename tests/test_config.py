"""Configuration errors name the bad key; the example file is valid; the environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import check_config_defaults
from common.config import PROJECT_ROOT, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_loads_and_matches_the_defaults():
    example = load_config(PROJECT_ROOT / "config.example.toml", env={})
    defaults = load_config(None, env={}, root=Path("/nonexistent-root-without-config"))
    assert example.model == defaults.model
    assert example.generation == defaults.generation
    assert example.limits == defaults.limits


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nthreads = 'two'\n", r"\[model\] threads: expected a whole number"),
        ("[model]\nthreds = 2\n", r"\[model\] threds: unknown setting"),
        ("[modle]\nthreads = 2\n", r"\[modle\]: unknown section"),
        ("[render]\nfallback_fonts = 'x.ttf'\n", r"\[render\] fallback_fonts: expected a list"),
        ("[telegram]\nenabled = 'yes'\n", r"\[telegram\] enabled: expected true or false"),
        ("model = 3\n", r"\[model\]: expected a table"),
        ("[discord]\nshard_ids = [0]\n", r"\[discord\] shard_ids: needs \[discord\] shard_count"),
        ("[discord]\nshard_count = 2\nshard_ids = [2]\n", r"shard_ids: \[2\] not in 0..1"),
        ("[discord]\nshard_count = 2\nshard_ids = [1, 1]\n", r"shard_ids: \[1, 1\] names a shard twice"),
        ("[discord]\nshard_count = -1\n", r"shard_count: must not be negative"),
        ("[telegram]\nwebhook_url = 'https://x.example/hook'\n", r"webhook_url is set but no secret"),
        ("[telegram]\nwebhook_url = 'http://x.example/hook'\n", r"webhook_url: Telegram posts only to https"),
        ("[telegram]\nwebhook_listen = '8443'\n", r"webhook_listen: expected host:port"),
        (
            "[telegram]\nwebhook_url = 'https://x.example/hook'\nwebhook_secret = 'sec ret!'\n",
            r"webhook_secret: Telegram takes 1-256 characters",
        ),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[generation]\nmethod = 'creative'\n",
            r"default method = 'creative': must be one of greedy, sample, beam",
        ),
        ("[generation]\ntemperature = -1\n", r"default temperature = -1.0: must be a number from 0.1 to 2"),
        ("[generation]\nbeam_width = 40\n", r"default beam_width = 40: must be a whole number from 1 to 16"),
    ],
)
def test_defaults_for_chat_settings_are_checked_by_the_settings_table(
    tmp_path: Path, text: str, message: str
):
    """One range per setting: bot/settings.py's, for the config's defaults as for /settings."""
    with pytest.raises(ConfigError, match=message):
        check_config_defaults(load_config(write(tmp_path, text), env={}))


def test_environment_overrides_the_file(tmp_path: Path):
    path = write(tmp_path, "[model]\ndevice = 'cpu'\n[telegram]\nenabled = true\n")
    config = load_config(
        path, env={"MEMEBOT_DEVICE": "cuda:1", "TELEGRAM_TOKEN": "123:abc", "MEMEBOT_DATABASE": "/tmp/x.db"}
    )
    assert config.model.device == "cuda:1"
    assert config.telegram.token == "123:abc"
    assert config.database_path == Path("/tmp/x.db")


def test_tokens_never_show_in_the_config_repr():
    config = load_config(
        None,
        env={
            "TELEGRAM_TOKEN": "123456:SECRET",
            "DISCORD_TOKEN": "discord-secret",
            "MEMEBOT_DATABASE_URL": "postgresql://bot:pg-secret@db/memes",
        },
    )
    assert "SECRET" not in repr(config) and "discord-secret" not in repr(config)
    assert "pg-secret" not in repr(config)


def test_a_postgresql_url_replaces_the_sqlite_file(tmp_path: Path):
    plain = load_config(write(tmp_path, "[storage]\ndatabase = '/tmp/x.db'\n"), env={})
    assert plain.database_location == Path("/tmp/x.db")
    url = "postgresql://bot:pw@db.example:5432/memes"
    from_file = load_config(write(tmp_path, f"[storage]\nurl = '{url}'\n"), env={})
    from_env = load_config(None, env={"MEMEBOT_DATABASE_URL": url})
    assert from_file.database_location == from_env.database_location == url
    with pytest.raises(ConfigError, match=r"\[storage\] url: must start with postgresql://") as err:
        load_config(write(tmp_path, "[storage]\nurl = 'mysql://bot:pw@db/memes'\n"), env={})
    assert "pw" not in str(err.value)  # the message does not repeat the URL and its password


def test_relative_paths_resolve_against_the_project_root():
    config = load_config(None, env={})
    assert config.dataset_dir == (PROJECT_ROOT / "../shared/data/imgflip575k/dataset").resolve()
    assert config.catalog_path == PROJECT_ROOT / "data/templates.toml"


def test_config_is_taken_before_or_after_the_subcommand(tmp_path, capsys):
    """`memebot run --config x.toml` and `memebot --config x.toml run` read the same file, at
    any depth of subcommand; a subcommand given no --config keeps the one given before it."""
    from cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[generation]\nmethod = "telepathy"\n')
    for argv in (
        ["--config", str(bad), "templates", "drake"],
        ["templates", "drake", "--config", str(bad)],
        ["data", "stats", "--config", str(bad)],
        ["--config", str(bad), "data", "stats"],
    ):
        assert main(argv) == 2, argv
        assert "configuration error" in capsys.readouterr().err
    assert main(["templates", "drake", "--config", "config.example.toml"]) == 0
    assert "drake" in capsys.readouterr().out


def test_each_process_is_told_its_shards_and_webhook_port_by_the_environment(tmp_path: Path):
    """One config file for every process; the environment says which shards and port are this one's,
    and carries the webhook secret (never in an error or repr)."""
    path = write(tmp_path, "[discord]\nshard_count = 4\n[telegram]\nwebhook_url = 'https://x.example/hook'\n")
    env = {
        "DISCORD_SHARD_IDS": "[2, 3]",
        "TELEGRAM_WEBHOOK_LISTEN": "0.0.0.0:9001",
        "TELEGRAM_WEBHOOK_SECRET": "s3cret-x",
    }
    config = load_config(path, env=env)
    assert (config.discord.shard_count, config.discord.shard_ids) == (4, [2, 3])
    assert config.telegram.webhook_address == ("0.0.0.0", 9001)
    assert config.telegram.webhook_secret == "s3cret-x" and "s3cret-x" not in repr(config)
