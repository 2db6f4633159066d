"""`memebot chat`: the console front end, in-process over text buffers and as the real command."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.console_app import ConsoleFrontEnd
from bot.service import MemeService
from common.config import ENV_OVERRIDES
from fakes.caption_model import (
    FIXED_ENDING,
    ScriptedCaptions,
    config_for_tests,
    scripted_service,
    write_untrained_checkpoint,
)

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


async def chat(service: MemeService, output: Path, script: str) -> list[str]:
    """Run the console on `script` (one command a line); its output lines."""
    out = io.StringIO()
    console = ConsoleFrontEnd(service, output, stdin=io.StringIO(script), stdout=out, user="tester")
    await console.run()
    return out.getvalue().splitlines()


@pytest.fixture
def model() -> ScriptedCaptions:
    return ScriptedCaptions()


@pytest.fixture
async def service(tmp_path: Path, model: ScriptedCaptions):
    async with scripted_service(config_for_tests(tmp_path), model) as service:
        yield service


async def test_meme_prints_the_caption_and_writes_the_image(service: MemeService, tmp_path: Path):
    out = await chat(
        service, tmp_path / "out", "/settings method greedy\n/meme change-my-mind pineapple on\n"
    )
    caption, saved = out[-2:]
    assert caption == f"#1 Change My Mind: pineapple on {FIXED_ENDING}"
    path = Path(saved.removeprefix("saved "))
    assert path.resolve() == (tmp_path / "out" / path.name).resolve()
    assert Image.open(path).size[0] > 100


async def test_rate_reroll_history_and_settings(
    service: MemeService, model: ScriptedCaptions, tmp_path: Path
):
    script = "\n".join(
        [
            "/rate 👍",  # nothing to rate yet
            "/meme two-buttons tabs",
            "/rate 👍",
            "/rate 👎",
            "/rate meh",
            "/reroll",
            "/settings temperature 0.4",
            "/meme drake",
            "/history",
            "/settings",
        ]
    )
    out = await chat(service, tmp_path / "out", script)
    assert out[0] == "Make a meme first: /meme"
    assert "#1: 👍 1 👎 0" in out and "#1: 👍 0 👎 1" in out
    assert "Rate with /rate 👍 or /rate 👎 (or + and -)." in out
    assert any(line.startswith("#2 Two Buttons: tabs take") for line in out)  # the reroll
    assert "Saved." in out and model.last.temperature == 0.4
    history = [line for line in out if line.startswith("#") and "👍" in line and ":" in line.split()[1]]
    assert [line.split()[0] for line in history] == ["#3", "#2", "#1"]
    assert "temperature: 0.4" in out


async def test_caption_templates_errors_and_quit(service: MemeService, tmp_path: Path):
    script = "\n".join(
        [
            "/caption drake no thanks | yes please",
            "/templates change mind",
            "/caption drakkar top | bottom",
            "/settings temperature hot",
            "hello",
            "/dance",
            "",
            "/quit",
            "/meme drake",  # after /quit: never runs
        ]
    )
    out = await chat(service, tmp_path / "out", script)
    assert out[0] == "#1 Drake Hotline Bling: no thanks | yes please"
    assert out[2].startswith("change-my-mind") and "Change My Mind" in out[2]
    assert any('No template "drakkar"' in line and "drake-hotline-bling" in line for line in out)
    assert any("temperature must be a number from 0.1 to 2" in line for line in out)
    assert "Commands start with /, e.g. /meme drake. Type /help for the list." in out
    assert "Unknown command /dance. Type /help for the list." in out
    assert len(list((tmp_path / "out").iterdir())) == 1


async def test_settings_help_and_hints_name_the_consoles_own_commands(service: MemeService, tmp_path: Path):
    script = "\n".join(
        [
            "/settings help",
            "/settings templates=drake cooldown=3",
            "/meme two-buttons",
            "/caption drake no | fuck yes",
            "/caption drake",
            "/settings =",
            "/settings templates all",
        ]
    )
    out = await chat(service, tmp_path / "out", script)
    text = "\n".join(out)
    assert "temperature (or temp): higher = wilder captions (0.1 to 2)" in out
    assert "allowed_templates: drake-hotline-bling" in out and "cooldown_s: 3" in out
    assert "Two Buttons isn't enabled here. Choose the templates with /settings templates NAMES" in text
    assert "or switch the filter off with /settings filter off" in text
    assert "Give me some text, e.g. /caption drake no thanks | yes please" in out
    assert any(line.startswith("Name a setting and a value, e.g. /settings temperature 0.9") for line in out)
    assert out[-1] == "keep_pictures: off" and "allowed_templates: all" in out
    # The console's user owns its settings: nobody else to ask, and no other platform's words.
    assert "admin" not in text and "Manage Server" not in text and "memeconfig" not in text


async def test_three_boxes_emoji_and_what_could_not_be_drawn_are_told(service: MemeService, tmp_path: Path):
    script = "\n".join(
        [
            "/caption two-buttons fix the bug | ship it anyway | me, sweating",
            "/caption drake a | b | c",
            "/caption drake \U0001e290 letter | 👍🏽",
        ]
    )
    out = await chat(service, tmp_path / "out", script)
    assert out[0] == "#1 Two Buttons: fix the bug | ship it anyway | me, sweating"
    assert out[2].startswith(
        "Drake Hotline Bling has 2 text boxes, and you gave 3 (boxes are separated by |)"
    )
    assert out[3] == "#2 Drake Hotline Bling: \U0001e290 letter | 👍🏽"
    if service.renderer.fonts.font_for("\U0001e290") is None:  # no font here has Toto letters
        assert out[4].startswith("Couldn't draw \U0001e290 (U+1E290): no font on this server has it")
    assert len(list((tmp_path / "out").iterdir())) == 2


async def test_console_is_never_rate_limited(tmp_path: Path):
    async with scripted_service(
        config_for_tests(tmp_path, user_burst=1, chat_burst=1), ScriptedCaptions()
    ) as service:
        out = await chat(service, tmp_path / "out", "/meme drake\n" * 5)
    assert sum(line.startswith("saved ") for line in out) == 5


# --- the real command -------------------------------------------------------------------------


def run_chat(tmp_path: Path, script: str, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndatabase = "{tmp_path / "chat.db"}"\n'
        f'[model]\ncheckpoint = "{checkpoint}"\ndevice = "cpu"\nthreads = 1\n'
        '[generation]\nmethod = "greedy"\nmax_length = 20\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "--config", str(config), "chat", "-o", str(tmp_path / "out")],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=45,
    )


def test_piped_chat_without_a_model_explains_and_still_captions(tmp_path: Path):
    started = time.monotonic()
    result = run_chat(tmp_path, "/meme drake\n/caption drake no | yes\n/quit\n", tmp_path / "absent.pt")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "no model yet" in result.stderr and "memebot train" in result.stderr
    assert "caption model isn't installed yet" in result.stdout
    assert (
        "You can still write your own with /caption, e.g. /caption drake no thanks | yes please"
        in result.stdout
    )
    assert "#1 Drake Hotline Bling: no | yes" in result.stdout
    assert (tmp_path / "out" / "meme-1.jpg").exists() or (tmp_path / "out" / "meme-1.png").exists()
    assert elapsed < 20, f"memebot chat took {elapsed:.1f} s to answer two commands"


def test_piped_chat_with_a_model_makes_a_meme(tmp_path: Path):
    checkpoint = write_untrained_checkpoint(tmp_path / "untrained.pt")
    result = run_chat(tmp_path, "/meme change-my-mind pineapple on\n", checkpoint)
    assert result.returncode == 0, result.stderr
    assert "no model yet" not in result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("#1 Change My Mind: pineapple on")  # then the untrained model's gibberish
    assert len(list((tmp_path / "out").iterdir())) == 1


async def test_a_picture_file_in_place_of_a_template(service: MemeService, tmp_path: Path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (360, 240), "orange").save(picture)
    not_a_picture = tmp_path / "notes.txt"
    not_a_picture.write_text("hello")
    out = await chat(
        service,
        tmp_path / "out",
        f"/settings method greedy\n/meme {picture} when the cat\n/reroll\n/caption {picture} top | bottom\n"
        f"/meme {not_a_picture} hi\n",
    )
    made = [line for line in out if line.startswith("#")]
    assert made[0] == f"#1 cat.png: when the cat {FIXED_ENDING} | box 2"  # top and bottom lines
    assert len(made) == 3 and made[2].endswith("top | bottom")
    saved = [Path(line.removeprefix("saved ")) for line in out if line.startswith("saved ")]
    assert all(Image.open(path).size == (360, 240) for path in saved)
    assert "isn't a picture" in out[-1]


async def test_console_leaderboard_and_forget(service: MemeService, tmp_path: Path):
    out = await chat(
        service,
        tmp_path / "out",
        "/caption drake one | two\n/rate 👍\n/caption two-buttons a | b\n/rate 👍\n/rate 👎\n"
        "/caption drake unrated | meme\n/top\n/top year\n/forget abc\n/forget 99\n/forget 1\n"
        "/forget\n/rate 👍\n/top all\n/history\n",
    )
    start = out.index("1. #1 drake-hotline-bling: one | two  +1 (👍 1 👎 0)")
    assert out[start + 1] == 'There\'s no "/top year": try /top week, /top month or /top all'  # only #1 liked
    assert out[start + 2 : start + 7] == [
        '"abc" isn\'t a meme number: try /forget 12 (numbers are in /history)',
        "There's no meme #99. /history lists yours with their numbers.",
        "Forgotten: #1 is gone from /history, /top and the exports.",
        "Forgotten: #3 is gone from /history, /top and the exports.",  # no number: the last meme
        "Make a meme first: /meme",
    ]
    assert out[start + 7] == "No memes with more 👍 than 👎 from all time yet. Rate them with /rate 👍"
    assert out[start + 8 :] == ["#2 two-buttons: a | b  👍 0 👎 1"]
