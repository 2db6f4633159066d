"""Closing the loop: ratings in the database -> export -> fine-tuned model that learned them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.storage import NewMeme, Storage
from cli.main import main
from model.checkpoint import load_checkpoint
from model.generate import load_generator
from model.requests import GenerationRequest
from tests.helpers.templates import catalog_template
from training.finetune import caption_weight

NEW_CAPTION = ["rated captions", "make better memes"]


async def _rated_database(path: Path) -> None:
    storage = await Storage.open(path, "test-key")
    try:
        for i in range(6):
            good = await storage.record_meme(
                NewMeme(
                    "telegram",
                    "chat",
                    f"user{i}",
                    catalog_template("drake-hotline-bling"),
                    "",
                    NEW_CAPTION,
                    "sample",
                    {},
                    "m",
                )
            )
            for voter in range(3):
                await storage.rate(good, "telegram", f"voter{voter}", +1)
        bad = await storage.record_meme(
            NewMeme(
                "telegram",
                "chat",
                "u",
                catalog_template("drake-hotline-bling"),
                "",
                ["a bad caption", "nobody liked"],
                "sample",
                {},
                "m",
            )
        )
        await storage.rate(bad, "telegram", "voter", -1)
    finally:
        await storage.close()


def test_weights_follow_the_score():
    assert caption_weight(-2) == caption_weight(0) == 0.0  # down-voted and unrated captions are not learned
    assert 0 < caption_weight(1) < caption_weight(5)


@pytest.mark.slow
def test_finetune_from_an_export_end_to_end(tmp_path, tiny_checkpoint, synthetic_dataset, capsys):
    db = tmp_path / "memes.db"
    asyncio.run(_rated_database(db))
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndatabase = "{db}"\n[paths]\ncache_dir = "{tmp_path / "cache"}"\n')
    export = tmp_path / "export.jsonl"
    assert (
        main(["--config", str(config), "export", "--min-score", "1", "-o", str(export), "--no-progress"]) == 0
    )
    assert len(export.read_text().splitlines()) == 6

    out = tmp_path / "tuned.pt"
    code = main(
        [
            "--config",
            str(config),
            "train",
            "--finetune",
            str(export),
            "--init-from",
            str(tiny_checkpoint),
            "--data",
            str(synthetic_dataset),
            "--max-steps",
            "60",
            "--lr",
            "3e-3",
            "-o",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed

    tuned = load_checkpoint(out)
    assert tuned.train["finetuned_from"] == load_checkpoint(tiny_checkpoint).model_id
    generator = load_generator(out)
    caption = generator.generate_batch(
        [GenerationRequest("Drake-Hotline-Bling", method="greedy", n_boxes=2)]
    )[0]
    assert caption.captions[0].boxes == NEW_CAPTION  # the up-voted caption was learned
    # Replay of the original data keeps what the model knew about the other templates.
    other = generator.generate_batch([GenerationRequest("Change-My-Mind", method="greedy", n_boxes=1)])[0]
    assert other.captions[0].boxes == ["pineapple on pizza is a crime"]
