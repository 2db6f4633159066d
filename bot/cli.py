"""The `memebot` command: parses arguments, loads the config once, dispatches.

Each subcommand lives in the module that owns its job; that module exposes
`register(subparsers)` which adds its parser and sets `handler(config, args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bot.config import ConfigError, load_config

# Modules that contribute subcommands, in the order `memebot --help` lists them.
COMMAND_MODULES = (
    "model.generate_cli",  # generate
    "bot.render_cli",  # render, gallery
    "bot.catalog_cli",  # templates
    "bot.doctor_cli",  # doctor
    "bot.run_cli",  # chat, run
    "bot.storage_cli",  # export, db
    "training.cli",  # data, train, eval
    "model.lexicon_cli",  # lexicon
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memebot",
        description="A meme bot with its own caption model: generate, render, train, serve.",
    )
    parser.add_argument("--config", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _accept_global_options(parser)
    return parser


CONFIG_HELP = "config file (default: ./config.toml if present, else built-in defaults)"


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """`memebot run --config x.toml` as well as `memebot --config x.toml run`: every subcommand,
    at any depth, also takes the global options. SUPPRESS keeps a subcommand that was not given
    one from overwriting what was given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
                _accept_global_options(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
        return int(args.handler(config, args) or 0)
    except ConfigError as exc:
        print(f"memebot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
