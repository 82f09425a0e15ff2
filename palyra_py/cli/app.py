"""The ``palyra`` Typer application: the command tree and ``--version``.

Importing this module must stay cheap: no aiohttp, jsonschema, tomlkit, keyring,
structlog or sqlite3 (``palyra daemon run`` imports the daemon inside the command).
Each command group's module is imported, and each command built, only when used
(``lazy_commands``; help pages and completion list them all), and parameters are coerced
without pydantic (``typer_params``). The entry point is ``palyra_py.cli.main``.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from palyra_py import __version__
from palyra_py.cli.lazy_commands import LazyCommands, TreeSettings, lazy_group, registration

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

# The command groups in help order: name -> module whose ``app`` is the group's Typer.
GROUPS: dict[str, str] = {
    "daemon": "palyra_py.cli.daemon_cmd",
    "webhooks": "palyra_py.cli.webhooks_cmd",
    "system": "palyra_py.cli.system_cmd",
    "subscriptions": "palyra_py.cli.subscriptions_cmd",
    "deliveries": "palyra_py.cli.deliveries_cmd",
    "tokens": "palyra_py.cli.tokens_cmd",
    "secrets": "palyra_py.cli.secrets_cmd",
    "registry": "palyra_py.cli.registry_cmd",
    "storage": "palyra_py.cli.storage_cmd",
}


def _coerce_without_pydantic() -> None:
    try:
        from palyra_py.cli import typer_params
    except ImportError:  # a Typer without this coercion layer: nothing to avoid
        return
    typer_params.install()


_coerce_without_pydantic()


class PalyraGroup(TyperGroup):
    """The root command: what ``app.add_typer()`` for each of ``GROUPS`` would give, with
    each group (its module, then each of its commands) built only when used."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands({name: partial(self._build_group, name) for name in GROUPS})

    def _build_group(self, name: str) -> TyperGroup:
        settings = TreeSettings(
            pretty_exceptions_short=app.pretty_exceptions_short,
            suggest_commands=self.suggest_commands,
            rich_markup_mode=self.rich_markup_mode,
        )
        sub_app = importlib.import_module(GROUPS[name]).app
        return lazy_group(registration(sub_app, name), settings)


app = typer.Typer(
    name="palyra",
    cls=PalyraGroup,
    epilog=EPILOG,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
