"""The `memebot` command: parses arguments, loads the config once, dispatches.

Each subcommand is a small module of this package: it exposes `register(subparsers)`, which adds
its parser and sets `handler(config, args) -> int`. The global options (`--config`, `-v`) are
accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bot.settings import check_config_defaults
from common.config import ConfigError, load_config

# Modules that contribute subcommands, in the order `memebot --help` lists them.
COMMAND_MODULES = (
    "cli.generate",  # generate
    "cli.pick",  # pick
    "cli.render",  # render, gallery
    "cli.templates",  # templates
    "cli.doctor",  # doctor
    "cli.run",  # run, chat
    "cli.serve_model",  # serve-model
    "cli.export",  # export
    "cli.database",  # db
    "cli.data",  # data stats, data pack
    "cli.train",  # train
    "cli.evaluate",  # eval
    "cli.quality",  # quality
    "cli.draft",  # draft
    "cli.lexicon",  # lexicon
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memebot",
        description="A meme bot with its own caption model: generate, render, train, serve.",
    )
    _add_global_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _accept_global_options(parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        default=default,
        help="config file (default: ./config.toml if present, else built-in defaults)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default or False,
        help="log more (every update handled)",
    )


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """`memebot run --config x.toml` as well as `memebot --config x.toml run`: every subcommand,
    at any depth, also takes the global options. SUPPRESS keeps a subcommand that was not given
    one from overwriting what was given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_global_options(subparser, default=argparse.SUPPRESS)
                _accept_global_options(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
        check_config_defaults(config)  # the chat settings' ranges: bot/settings.py's table
        return int(args.handler(config, args) or 0)
    except ConfigError as exc:
        print(f"memebot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
