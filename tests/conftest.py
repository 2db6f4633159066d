"""Shared fixtures: a small synthetic dataset and a tiny model trained on it in seconds.

The synthetic data has one fixed caption per template, so a model that learned it must
reproduce exactly those captions: tests can assert on real generated text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.postgres import INSTALL_HINT, PostgresServer, find_bin_dir

# Loopback traffic of the fake chat servers must never go through a proxy.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

SYNTHETIC_CAPTIONS = {
    "Drake-Hotline-Bling": ["writing tests", "shipping on friday"],
    "Change-My-Mind": ["pineapple on pizza is a crime"],
    "Two-Buttons": ["tabs", "spaces", "me"],
    "Ancient-Aliens": ["i'm not saying it was aliens", "but it was aliens"],
}


def write_dataset(root: Path, captions: dict[str, list[str]], copies: int = 40) -> Path:
    """An ImgFlip575K-layout folder: memes/<Template>.json, each caption repeated `copies` times."""
    memes = root / "memes"
    memes.mkdir(parents=True, exist_ok=True)
    for name, boxes in captions.items():
        entries = [
            {
                "url": f"https://i.imgflip.com/{name}-{i}.jpg",
                "post": f"https://imgflip.com/i/{name}-{i}",
                "metadata": {"views": "1,234", "img-votes": "12", "title": name, "author": "test"},
                "boxes": boxes,
            }
            for i in range(copies)
        ]
        (memes / f"{name}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), SYNTHETIC_CAPTIONS)


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer transformer that has memorised SYNTHETIC_CAPTIONS (a few seconds on 2 cores)."""
    import torch

    from training.dataset import load_dataset
    from training.train import Recipe, train

    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("tiny-run")
    dataset = load_dataset(synthetic_dataset, run / "cache")
    dataset.is_val[:] = False  # train on everything: memorising is the point
    dataset.is_val[::7] = True
    recipe = Recipe(
        arch="transformer",
        model={"n_layer": 1, "n_embd": 48, "n_head": 2, "block_size": 208},
        batch_size=32,
        lr=1e-2,
        warmup_steps=10,
        max_steps=150,
        eval_every=150,
        eval_memes=50,
        unknown_template_p=0.0,
        weight_decay=0.0,
    )
    train(recipe, dataset, run, device="cpu", progress=False)
    return run / "best.pt"


# --- PostgreSQL ----------------------------------------------------------------------------

POSTGRES_SKIPPED = "PostgreSQL tests skipped"  # starts every skip reason; the summary counts them
POSTGRES_TEST_PASSWORD = "pg-test-secret"  # in every test URL; trust authentication ignores it


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (tests/helpers/postgres.py).

    Skipped only when no server binaries are installed, and then loudly (the summary below);
    with MEMEBOT_REQUIRE_POSTGRES=1 (CI) that is a failure instead. Binaries that are there but
    fail to start the server are always a failure: something is broken.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = f"{POSTGRES_SKIPPED}: no initdb/pg_ctl/postgres found; {INSTALL_HINT}"
        if os.environ.get("MEMEBOT_REQUIRE_POSTGRES"):
            pytest.fail(reason + " (MEMEBOT_REQUIRE_POSTGRES is set)", pytrace=False)
        pytest.skip(reason)
    server = PostgresServer.start(bin_dir)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty PostgreSQL database for one test (left for the server's teardown to remove).
    Its URL carries a password, so whatever shows the URL is seen hiding it."""
    return postgres_server.url(postgres_server.create_database(), password=POSTGRES_TEST_PASSWORD)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A skipped PostgreSQL test is easy to miss among dots: say it in red at the end."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if POSTGRES_SKIPPED in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        reason = str(skipped[0].longrepr[2]) if isinstance(skipped[0].longrepr, tuple) else ""
        terminalreporter.write_sep("!", f"{len(skipped)} PostgreSQL tests were SKIPPED", red=True, bold=True)
        terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)
