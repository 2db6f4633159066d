"""The `memebot` command line: `cli/main.py` parses the global options and dispatches; every
subcommand is a small module here that adds its parser (`register`) and does its job by calling
bot/, model/ and training/."""
