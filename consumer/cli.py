"""The `gr-consumer` command line.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this file only wires them, importing lazily so that
`--help` stays fast and a command's heavy imports cost nothing to the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

# command name -> (module, one-line help): the production commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("consumer.commands.run", "run the service (configured by the environment)"),
    "check-config": (
        "consumer.commands.check_config",
        "validate the configuration and print it, secrets redacted",
    ),
    "publish": ("consumer.commands.publish", "validate JSON-lines events and produce them"),
    "dlq": ("consumer.commands.dlq", "inspect and replay the dead-letter topic"),
}

# Other distributions add commands through this entry-point group: each entry
# names a (module, one-line help) pair, so listing them imports nothing heavy.
# The development tools (gr-s2s-consumer-dev) add `demo` and `simulate-api`;
# a production install has none.
ENTRY_POINT_GROUP = "gr_consumer.commands"


def _commands() -> dict[str, tuple[str, str]]:
    found = dict(COMMANDS)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in found:  # a plug-in never shadows a production command
            module_name, help_text = entry.load()
            found[entry.name] = (str(module_name), str(help_text))
    return found


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gr-consumer",
        description="Forward game events from Kafka to the GameRebellion S2S API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen command's module is imported: its arguments are added then.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in _commands().items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(args_list)
    args = parser.parse_args(args_list)
    result: int = args._run(args)
    return result
