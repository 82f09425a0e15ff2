"""``palyra webhooks ...``: register, inspect, change and test inbound integrations."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from pathlib import Path
from typing import Annotated, Any

import typer

from palyra_py.cli import output, webhook_views
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    check_failed,
    confirm_or_exit,
    run_read,
)
from palyra_py.cli.webhook_inputs import (
    duration_option,
    load_payload,
    provider_options,
    response_fields,
    secret_source,
    split_list,
)
from palyra_py.cli.webhook_options import (
    DisplayNameOption,
    IdArgument,
    MaxPayloadOption,
    ReplayWindowOption,
    ResponseArgOption,
    ResponseBodyOption,
    ResponseCommandOption,
    ResponseContentTypeOption,
    ResponseStatusOption,
    ResponseTimeoutOption,
    SourcesOption,
    TimestampToleranceOption,
)
from palyra_py.cli.webhooks_update import update
from palyra_py.clients.admin import JsonObject

app = typer.Typer(
    help="Inbound integrations: one per provider endpoint, each with its own secret.",
    no_args_is_help=True,
)

GenerateSecretOption = Annotated[
    bool,
    typer.Option(
        "--generate-secret",
        help="The daemon generates a strong secret and shows it once.",
    ),
]
SecretStdinOption = Annotated[
    bool,
    typer.Option(
        "--secret-stdin",
        help="Read the secret from one line of standard input (prompted, hidden, on a TTY).",
    ),
]
SecretRefOption = Annotated[
    str | None,
    typer.Option(
        "--secret-ref",
        metavar="REF",
        help="Use a secret kept elsewhere: keyring:NAME, db:NAME, env:VAR or file:PATH.",
    ),
]

READY_ENOUGH = frozenset({"ready", "disabled"})


def _show_secret_answer(answer: JsonObject) -> None:
    """Print a generated secret once, then where to point the provider and what next."""
    hook = answer.get("webhook") or {}
    console = output.console()
    secret = answer.get("secret")
    if isinstance(secret, str) and secret:
        console.print(webhook_views.secret_panel(secret, str(hook.get("integration_id", "?"))))
    console.print(webhook_views.next_steps(hook, secret_shown=bool(secret)))


@app.command("add")
def add(
    integration_id: IdArgument,
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            "-p",
            help="github, stripe, slack, gitlab, shopify, standard-webhooks or generic.",
            show_default=False,
        ),
    ],
    display_name: DisplayNameOption = None,
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--events",
            "-e",
            metavar="GLOB",
            help="Accept only these event types (repeatable or comma-separated). Default: all.",
        ),
    ] = None,
    sources: SourcesOption = None,
    max_payload_bytes: MaxPayloadOption = None,
    timestamp_tolerance: TimestampToleranceOption = None,
    replay_window: ReplayWindowOption = None,
    no_signature_required: Annotated[
        bool,
        typer.Option(
            "--no-signature-required",
            help="Accept unsigned deliveries (verify them when a signature is present).",
        ),
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            metavar="KEY=VALUE",
            help="Provider option (repeatable), e.g. for generic: header=X-Signature.",
        ),
    ] = None,
    response_status: ResponseStatusOption = None,
    response_body: ResponseBodyOption = None,
    response_content_type: ResponseContentTypeOption = None,
    response_command: ResponseCommandOption = None,
    response_arg: ResponseArgOption = None,
    response_timeout: ResponseTimeoutOption = None,
    generate_secret: GenerateSecretOption = False,
    secret_stdin: SecretStdinOption = False,
    secret_ref: SecretRefOption = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Register it disabled (answers 503 until enabled).")
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register an integration (one provider endpoint with its own secret).

    Exactly one secret source is required: --generate-secret, --secret-stdin
    or --secret-ref. A generated secret is printed once, with the ingress URL
    to give the provider; with --json it is in the JSON answer, once. A given
    secret that can never verify is refused (exit 1), e.g. a standard-webhooks
    secret that is neither whsec_<base64> nor a whpk_ Ed25519 public key.

    Examples:

    $ palyra webhooks add gh --provider github -e push,pull_request --generate-secret
    $ palyra webhooks add shop --provider stripe --secret-stdin < whsec.txt
    $ palyra webhooks add ci --provider generic --secret-ref env:CI_SECRET -o header=X-Sig
    $ palyra webhooks add deploy --provider slack --secret-stdin --response-body 'On it.'
        --response-command /usr/local/bin/deploy-reply --response-arg --json < signing.txt
    """
    secret = secret_source(generate_secret, secret_stdin, secret_ref, default_generate=False)
    fields: JsonObject = {"integration_id": integration_id, "provider": provider, "secret": secret}
    optional: dict[str, Any] = {
        "display_name": display_name,
        "allowed_events": split_list(events),
        "allowed_sources": split_list(sources),
        "max_payload_bytes": max_payload_bytes,
        "timestamp_tolerance_s": duration_option(
            timestamp_tolerance, "--timestamp-tolerance"
        ),
        "replay_window_s": duration_option(replay_window, "--replay-window"),
        "signature_required": False if no_signature_required else None,
        "enabled": False if disabled else None,
        "provider_options": provider_options(option),
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    fields.update(response_fields(response_status, response_body, response_content_type,
                                  response_command, response_arg, response_timeout))
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.add_webhook(fields)
    if json_output:
        output.print_json(answer)
        return
    hook = answer.get("webhook") or {}
    output.success(
        f"Added {hook.get('integration_id', integration_id)} "
        f"(readiness: {hook.get('readiness', '?')})."
    )
    _show_secret_answer(answer)


app.command("update")(update)


@app.command("list")
def list_(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """List integrations with their readiness and last test.

    Example:

    $ palyra webhooks list
    """
    run_read(("webhooks", "list"), state_dir, json_output)


@app.command("show")
def show(integration_id: IdArgument, state_dir: StateDirOption = None,
         json_output: JsonOption = False) -> None:
    """Show every field of one integration (its secret reference, never the secret).

    Example:

    $ palyra webhooks show gh
    """
    run_read(("webhooks", "show"), state_dir, json_output, integration_id)


@app.command("remove")
def remove(
    integration_id: IdArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove an integration; its journaled events stay.

    Asks for confirmation unless --yes. Without a terminal, --yes is required
    (exit code 2 otherwise, and also when you answer no).

    Example:

    $ palyra webhooks remove old-hook --yes
    """
    confirm_or_exit(
        yes, question=f"Remove integration {integration_id}?", declined="Nothing removed.",
        refusal=f"not removing {integration_id} without confirmation: add --yes",
    )
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.remove_webhook(integration_id)
    if json_output:
        output.print_json(answer)
        return
    output.success(f"Removed {answer.get('integration_id', integration_id)}.")


def _set_enabled(integration_id: str, enabled: bool, state_dir: Path | None,
                 json_output: bool) -> None:
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.set_webhook_enabled(integration_id, enabled)
    if json_output:
        output.print_json(answer)
        return
    hook = answer.get("webhook") or {}
    verb = "Enabled" if enabled else "Disabled"
    output.success(f"{verb} {integration_id} (readiness: {hook.get('readiness', '?')}).")


@app.command("enable")
def enable(integration_id: IdArgument, state_dir: StateDirOption = None,
           json_output: JsonOption = False) -> None:
    """Accept deliveries for an integration again.

    Example:

    $ palyra webhooks enable gh
    """
    _set_enabled(integration_id, True, state_dir, json_output)


@app.command("disable")
def disable(integration_id: IdArgument, state_dir: StateDirOption = None,
            json_output: JsonOption = False) -> None:
    """Stop accepting deliveries for an integration (503 with Retry-After).

    Providers retry later instead of dropping the events.

    Example:

    $ palyra webhooks disable gh
    """
    _set_enabled(integration_id, False, state_dir, json_output)


@app.command("rotate-secret")
def rotate_secret(
    integration_id: IdArgument,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="DURATION",
            help="How long the previous secret keeps working (0 ends it now).",
        ),
    ] = "24h",
    generate_secret: GenerateSecretOption = False,
    secret_stdin: SecretStdinOption = False,
    secret_ref: SecretRefOption = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Replace an integration's secret, keeping the old one valid for a grace period.

    Both secrets verify during --grace, so the provider can be switched
    without losing deliveries. Without a source flag a new secret is
    generated and printed once.

    Examples:

    $ palyra webhooks rotate-secret gh
    $ palyra webhooks rotate-secret shop --secret-ref keyring:shop-2 --grace 1h
    """
    grace_s = duration_option(grace, "--grace")
    secret = secret_source(generate_secret, secret_stdin, secret_ref, default_generate=True)
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.rotate_secret(integration_id, grace_s=grace_s, secret=secret)
    if json_output:
        output.print_json(answer)
        return
    hook = answer.get("webhook") or {}
    until = output.moment(answer.get("previous_valid_until"))
    console = output.console()
    output.success(f"Rotated the secret of {integration_id}.")
    new_secret = answer.get("secret")
    if isinstance(new_secret, str) and new_secret:
        console.print(webhook_views.secret_panel(new_secret, integration_id))
    shown = bool(new_secret)
    console.print(webhook_views.rotation_steps(hook, until=until, secret_shown=shown))


@app.command("readiness")
def readiness(
    integration_id: Annotated[
        str | None, typer.Argument(metavar="ID", help="Only this integration.")
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check that each integration's secret can be resolved.

    Exits 4 if any integration is not ready (invalid_secret_ref or
    secret_not_found); disabled ones do not count.

    Example:

    $ palyra webhooks readiness || echo "a secret is missing"
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.readiness(integration_id)
    items = answer.get("readiness") or []
    if json_output:
        output.print_json(answer)
    elif items:
        output.console().print(webhook_views.readiness_table(items))
    else:
        output.note("No integrations.")
    not_ready = [item for item in items if item.get("readiness") not in READY_ENOUGH]
    if not_ready:
        if not json_output:
            names = ", ".join(str(item.get("integration_id")) for item in not_ready)
            output.error(f"not ready: {names}")
        check_failed()


@app.command("test")
def test(
    integration_id: IdArgument,
    event: Annotated[
        str | None, typer.Option("--event", metavar="TYPE", help="Event type to send.")
    ] = None,
    payload: Annotated[
        Path | None,
        typer.Option("--payload", metavar="FILE", help="JSON object to send ('-' for stdin)."),
    ] = None,
    tamper: Annotated[
        bool,
        typer.Option(
            "--tamper",
            help="Corrupt the signature: the check passes when the ingress REJECTS it.",
        ),
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send a signed test delivery through the real ingress path.

    Prints the outcome, HTTP status, reason and the journal seq and event id.
    Exits 4 unless the signature was verified (outcome accepted, or ignored
    when the event type is not in the integration's allowed events); with
    --tamper, unless it is rejected (a tampered signature must be refused).
    Outcome cannot_sign (exit 4) means nothing was sent: the integration
    holds a whpk_ public key (only the sender can sign) or a secret that
    does not decode.
    Without --event, the provider's sample event is sent, or the first plain
    name in allowed events when the sample's type is not allowed.

    Examples:

    $ palyra webhooks test gh --event push --payload push.json
    $ palyra webhooks test gh --tamper
    """
    body: JsonObject = {}
    if event is not None:
        body["event"] = event
    loaded = load_payload(payload)
    if loaded is not None:
        body["payload"] = loaded
    if tamper:
        body["tamper"] = True
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.test_webhook(integration_id, body)
    if json_output:
        output.print_json(answer)
    else:
        output.console().print(webhook_views.test_result(answer, tamper=tamper))
    outcome = answer.get("outcome")
    passed = outcome == "rejected" if tamper else outcome in ("accepted", "ignored")
    if not passed:
        if not json_output:
            expected = "rejected" if tamper else "accepted"
            output.error(f"expected outcome {expected}, got {outcome}")
        check_failed()
    if outcome == "ignored" and not json_output:
        output.error("the signature was verified, but the event type is not in allowed_events")
