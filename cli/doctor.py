"""`memebot doctor`: what this machine can draw in a caption, and what to install for the rest."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bot.fonts import RAQM, FontError, FontSet
from bot.graphemes import clusters
from cli.render import make_renderer
from common.config import Config


@dataclass(frozen=True)
class Sample:
    name: str
    text: str
    package: str  # the Debian package with a font for it (scripts/setup.sh installs it)


SCRIPTS = (
    Sample("Latin", "Memes ÀÉÎÕÜ ĄŁŐŞŽ", "fontpkg-anton (pip)"),
    Sample("Greek", "Γειά σου κόσμε", "fonts-noto-core"),
    Sample("Cyrillic", "Привет мир", "fonts-noto-core"),
    Sample("Arabic", "مرحبا بالعالم", "fonts-noto-core"),
    Sample("Hebrew", "שלום עולם", "fonts-noto-core"),
    Sample("Devanagari (Hindi)", "नमस्ते दुनिया", "fonts-noto-core"),
    Sample("Thai", "สวัสดีชาวโลก", "fonts-noto-core"),
    Sample("Japanese", "こんにちは世界", "fonts-noto-cjk"),
    Sample("Chinese", "你好世界", "fonts-noto-cjk"),
    Sample("Korean", "안녕하세요", "fonts-noto-cjk"),
)
EMOJI = (
    Sample("emoji", "😂🔥👍", "fonts-noto-color-emoji"),
    Sample("skin tones", "👍🏽", "fonts-noto-color-emoji"),
    Sample("flags", "🇯🇵🇧🇷", "fonts-noto-color-emoji"),
    Sample("joined emoji (ZWJ)", "👩\u200d💻", "fonts-noto-color-emoji"),
)


def register(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="which scripts and emoji this machine can draw, and what to install for the rest",
        description=__doc__,
    )
    doctor.set_defaults(handler=run_doctor)


def _fonts_for(fonts: FontSet, text: str) -> list[int]:
    used = []
    for run in fonts.runs(fonts.drawable(text), 40):
        if run.text.strip() and run.font_index not in used:
            used.append(run.font_index)
    return used


def _name(fonts: FontSet, index: int) -> str:
    family, style = fonts.font(index, 40).getname()
    return f"{family} {style}".strip()


def check(fonts: FontSet) -> tuple[list[str], set[str]]:
    """The report's lines, and the packages that would fill its gaps."""
    lines: list[str] = []
    wanted: set[str] = set()
    single = fonts.width("😀", 40)

    def line(sample: Sample, ok: bool, detail: str) -> None:
        lines.append(f"  {'ok ' if ok else 'NO '} {sample.name:<20} {sample.text:<16} {detail}")
        if not ok:
            wanted.add(sample.package)

    lines.append("Scripts:")
    for sample in SCRIPTS:
        lost = fonts.undrawable(sample.text)
        used = ", ".join(_name(fonts, i) for i in _fonts_for(fonts, sample.text))
        if lost:
            line(sample, False, f"cannot draw {''.join(lost)}: install {sample.package}")
        else:
            line(sample, True, used)
    lines.append("Emoji:")
    for sample in EMOJI:
        lost = fonts.undrawable(sample.text)
        runs = [r for r in fonts.runs(fonts.drawable(sample.text), 40) if r.text.strip()]
        colour = bool(runs) and all(r.colour for r in runs)
        # Each cluster one picture, as wide as any single emoji: not drawn in pieces.
        whole = abs(fonts.width(sample.text, 40) - len(clusters(sample.text)) * single) < 1
        if lost:
            line(sample, False, f"cannot draw {''.join(lost)}: install {sample.package}")
        elif not colour:
            line(
                sample,
                False,
                f"drawn without colour ({_name(fonts, runs[0].font_index)}): install {sample.package}",
            )
        elif not whole:
            line(sample, False, f"drawn in pieces, not as one picture: install {sample.package} and libraqm")
        else:
            line(sample, True, ", ".join(_name(fonts, i) for i in _fonts_for(fonts, sample.text)))
    if RAQM:
        lines.append("Right-to-left and complex scripts: shaped by libraqm (Pillow's text layout)")
    else:
        lines.append(
            "Right-to-left and complex scripts: NO libraqm, so Arabic letters are not joined and Indic "
            "signs not placed: install libfribidi0 and libharfbuzz0b (Pillow's wheels load them)"
        )
        wanted.add("libfribidi0")
    return lines, wanted


def run_doctor(config: Config, args: argparse.Namespace) -> int:
    try:
        renderer = make_renderer(config)
    except FontError as exc:
        print(f"memebot doctor: {exc}")
        return 1
    fonts = renderer.fonts
    lines, wanted = check(fonts)
    print("Fonts tried for each character, in order (the first that has it draws it):")
    shown = 0
    for i, file in enumerate(fonts.files):
        if not fonts.face(i).usable:
            continue
        face = fonts.face(i)
        kind = (
            f", colour bitmaps at {face.native_size} px, scaled"
            if face.native_size
            else (", colour" if face.colour else "")
        )
        print(f"  {i:>2}. {_name(fonts, i)} ({file.path}{kind})")
        shown += 1
        if shown >= 12 and i < len(fonts.files) - 1:
            print(f"      ... and {len(fonts.files) - i - 1} more from fontconfig")
            break
    print("\n".join(lines))
    if wanted:
        debian = sorted(p for p in wanted if not p.endswith("(pip)"))
        print(
            "To draw the rest: `sudo apt-get install " + " ".join(debian) + "` (Debian/Ubuntu; "
            "scripts/setup.sh does this when it runs as root), then run `memebot doctor` again."
        )
        return 1
    print("Everything above can be drawn.")
    return 0
