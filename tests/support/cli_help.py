"""Read `gr-consumer --help`."""

from __future__ import annotations


def help_commands(text: str) -> list[str]:
    """The command names `gr-consumer --help` lists, in order (argparse's layout)."""
    lines = text.split("positional arguments:", 1)[1].split("options:", 1)[0].splitlines()
    return [
        line.split()[0]
        for line in lines
        if line.startswith("    ") and not line.startswith("     ")
    ]
