"""``palyra tokens ...``: bearer tokens that let applications publish events over HTTP."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from palyra_py.cli import outbound_views, output
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    confirm_or_exit,
    run_read,
)
from palyra_py.cli.webhook_inputs import duration_option, split_list
from palyra_py.clients.admin import AdminClient
from palyra_py.clients.errors import ApiError

app = typer.Typer(
    help="API tokens: applications publish and read events and scrape /metrics over HTTP.",
    no_args_is_help=True,
)

PLACEHOLDER_URL = "http://HOST:PORT"


def publish_base_url(status: Mapping[str, Any]) -> str:
    """Where applications reach ``/v1/events``: the daemon's ``public_url`` setting when
    set, else its ingress listener, else a placeholder."""
    for setting in status.get("settings") or []:
        if (
            isinstance(setting, Mapping)
            and setting.get("section") == "daemon"
            and setting.get("key") == "public_url"
            and isinstance(setting.get("value"), str)
            and setting["value"]
        ):
            return str(setting["value"]).rstrip("/")
    for listener in status.get("listeners") or []:
        if isinstance(listener, Mapping) and listener.get("kind") == "ingress":
            return str(listener.get("address") or PLACEHOLDER_URL).rstrip("/")
    return PLACEHOLDER_URL


def _base_url(client: AdminClient) -> str:
    # Asked before the token is created: a failure here must not lose a token that is
    # shown only once, so it only costs the example its real address.
    try:
        return publish_base_url(client.status())
    except ApiError:
        return PLACEHOLDER_URL


@app.command("create")
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Who uses it, e.g. ci or billing-app.",
                            show_default=False)
    ],
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="A note for people.")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope", "-s", metavar="SCOPE",
            help="What it may do (repeatable, or comma-separated): publish[:GLOB],"
                 " read[:GLOB], metrics, admin. Default: publish.",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", metavar="DURATION",
                     help="Refuse it (401 token_expired) after this long, e.g. 90d, 12h.",
                     show_default=False),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an API token for the ingress listener, shown once.

    Applications send it as "Authorization: Bearer <token>" to POST
    /v1/events (publish scope), GET /v1/events and /v1/events/stream (read
    scope) or GET /metrics (metrics scope) on the ingress listener. A GLOB
    limits the event types (publish:entry.*). Received webhooks and the
    daemon's own events are read only with a glob naming their namespace
    (read:github.*): read and read:* give what applications publish. The
    token is printed once, with a curl example; with --json it is in the
    JSON answer, once.

    Example:

    $ palyra tokens create ci --scope 'publish:deploy.*' --scope 'read:deploy.*' --expires 90d
    """
    fields: dict[str, Any] = {"name": name}
    if description is not None:
        fields["description"] = description
    scopes = split_list(scope)
    if scopes:
        fields["scopes"] = scopes
    expires_in_s = duration_option(expires, "--expires")
    if expires_in_s is not None:
        fields["expires_in_s"] = expires_in_s
    with admin_session(state_dir, json_output=json_output) as client:
        base_url = PLACEHOLDER_URL if json_output else _base_url(client)
        answer = client.create_token(fields)
    if json_output:
        output.print_json(answer)
        return
    token = answer.get("token") or {}
    output.success(f"Created token {token.get('token_id', '?')} ({token.get('name', name)}).")
    secret = answer.get("secret")
    if isinstance(secret, str) and secret:
        output.console().print(outbound_views.token_panel(secret, token, base_url))


@app.command("list")
def list_(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """List API tokens: scopes, expiry, last use (never the tokens themselves).

    A token created before scopes existed shows "legacy: ..." with the rights
    it keeps. Last use is kept in memory and saved every minute, so it may
    lag a crash by that much.

    Example:

    $ palyra tokens list
    """
    run_read(("tokens", "list"), state_dir, json_output)


@app.command("revoke")
def revoke(
    token_id: Annotated[
        str, typer.Argument(metavar="ID", help="Token id (see tokens list).", show_default=False)
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke a token: requests that carry it are refused (401) from now on.

    Asks for confirmation unless --yes. Without a terminal, --yes is required
    (exit code 2 otherwise, and also when you answer no).

    Example:

    $ palyra tokens revoke 7kq2m9x4 --yes
    """
    confirm_or_exit(
        yes, question=f"Revoke token {token_id}?", declined="Nothing revoked.",
        refusal=f"not revoking {token_id} without confirmation: add --yes",
    )
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.revoke_token(token_id)
    if json_output:
        output.print_json(answer)
        return
    output.success(f"Revoked token {answer.get('token_id', token_id)}.")
