"""``palyra system ...``: system-wide views (today, the event journal)."""

from __future__ import annotations

import typer

from palyra_py.cli import events_cmd

app = typer.Typer(
    help="System-wide views: the event journal.",
    no_args_is_help=True,
)
app.add_typer(events_cmd.app, name="events")
