"""Command line: a thin typer layer over the library."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Convert low-bit LLM checkpoints to T-MAC's layout.")


def main() -> None:
    app()
