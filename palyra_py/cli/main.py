"""The ``palyra`` application: the command tree, ``--version`` and the entry point.

Importing this module must stay cheap: no aiohttp, jsonschema, tomlkit, keyring,
structlog or sqlite3 (``palyra daemon run`` imports the daemon inside the command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from palyra_py import __version__
from palyra_py.cli import (
    daemon_cmd,
    deliveries_cmd,
    events_cmd,
    subscriptions_cmd,
    tokens_cmd,
    webhooks_cmd,
)

EPILOG = """[bold]Quick start[/bold]

  palyra daemon run --state-dir ~/.palyra      (foreground; then, elsewhere:)
  export PALYRA_STATE_DIR=~/.palyra
  palyra webhooks add gh --provider github --generate-secret
  palyra webhooks test gh
  palyra system events tail -f
  palyra subscriptions add ci --url https://ci.example/hook -e 'github.*'
  palyra subscriptions test ci

[bold]Exit codes[/bold]

  0  ok
  1  the daemon answered an error (printed; with --json, its JSON on stdout)
  2  usage error, or a removal not confirmed
  3  the daemon is not reachable (not running, or no access to its socket)
  4  a check failed: broken journal chain, test not accepted or not
     delivered, integration not ready

Reference: docs/cli.md"""

app = typer.Typer(
    name="palyra",
    epilog=EPILOG,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

system_app = typer.Typer(
    help="System-wide views: the event journal.",
    no_args_is_help=True,
)
system_app.add_typer(events_cmd.app, name="events")

app.add_typer(daemon_cmd.app, name="daemon")
app.add_typer(webhooks_cmd.app, name="webhooks")
app.add_typer(system_app, name="system")
app.add_typer(subscriptions_cmd.app, name="subscriptions")
app.add_typer(deliveries_cmd.app, name="deliveries")
app.add_typer(tokens_cmd.app, name="tokens")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"palyra {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """palyra: a self-hosted webhook gateway.

    The daemon receives signed webhooks (GitHub, Stripe, Slack, GitLab, Shopify,
    Standard Webhooks, generic HMAC), verifies them and records them in a durable
    journal, and delivers published events to subscribed endpoints. This
    command line talks to it over its Unix socket.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (also ``python -m palyra_py``)."""
    app(args=list(argv) if argv is not None else None, prog_name="palyra")
