"""``palyra subscriptions ...``: outbound webhook endpoints that receive published events."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from typing import Annotated, Any

import typer

from palyra_py.cli import outbound_views, output, replay_cmd
from palyra_py.cli.events_cmd import load_data
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    check_failed,
    confirm_or_exit,
    run_read,
    usage_error,
)
from palyra_py.cli.subscription_inputs import (
    parse_env,
    parse_filters,
    parse_headers,
    parse_retry_schedule,
)
from palyra_py.cli.subscriptions_update import (
    IdArgument,
    PayloadFormat,
    SignatureFormat,
    update,
)
from palyra_py.cli.webhook_inputs import duration_option, secret_source, split_list
from palyra_py.clients.admin import JsonObject

app = typer.Typer(
    help="Outbound subscriptions: HTTP endpoints (signed) or local commands that receive"
    " published events.",
    no_args_is_help=True,
)
app.command("replay")(replay_cmd.replay)


GenerateSecretOption = Annotated[
    bool,
    typer.Option(
        "--generate-secret",
        help="The daemon generates a whsec_ signing secret and shows it once (the default).",
    ),
]
SecretStdinOption = Annotated[
    bool,
    typer.Option(
        "--secret-stdin",
        help="Read a whsec_ secret from one line of standard input (hidden on a TTY).",
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


@app.command("add")
def add(
    subscription_id: IdArgument,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL",
                     help="http(s) endpoint to POST to, or a reference the daemon resolves: "
                     "keyring:NAME, env:VAR, file:/path. Give --url, --command or --email.",
                     show_default=False),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option("--command", metavar="PROGRAM",
                     help="Run this program for each event instead of POSTing (never through "
                     "a shell); the event's JSON is on its standard input.",
                     show_default=False),
    ] = None,
    email: Annotated[
        list[str] | None,
        typer.Option("--email", metavar="ADDRESS",
                     help="Mail each event to this address instead (repeatable, at most 20);"
                     " SMTP is set in [email] of palyra.toml.", show_default=False),
    ] = None,
    args: Annotated[
        list[str] | None,
        typer.Option("--arg", metavar="ARG",
                     help="An argument of --command (repeatable, in order), with "
                     "placeholders: '{data.ref}', '{id}', '{type}', '{data.ref:-main}'.",
                     show_default=False),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="NAME=VALUE",
                     help="An environment variable of --command (repeatable); VALUE may be "
                     "keyring:NAME, env:VAR or file:/path, read at run time.",
                     show_default=False),
    ] = None,
    working_dir: Annotated[
        str | None,
        typer.Option("--working-dir", metavar="DIR",
                     help="Where --command runs (an absolute path).", show_default=False),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option("--max-concurrent", min=1, metavar="N",
                     help="Runs of --command at once (1-32, default 1).", show_default=False),
    ] = None,
    success_exit_codes: Annotated[
        list[int] | None,
        typer.Option("--success-exit-code", metavar="CODE",
                     help="An exit code of --command that means success (repeatable; "
                     "default 0).", show_default=False),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option("--run-as", metavar="USER",
                     help="Run --command as this user (the daemon must run as root).",
                     show_default=False),
    ] = None,
    url_in_keyring: Annotated[
        bool | None,
        typer.Option("--url-in-keyring/--url-in-registry",
                     help="Keep the URL in the keyring, not in webhooks.toml (default: "
                     "the keyring for slack and discord, whose URLs hold a credential, and "
                     "for a URL with ?token=, ?api_key=, ?sig=...).",
                     show_default=False),
    ] = None,
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--events",
            "-e",
            metavar="GLOB",
            help="Published types to send (repeatable or comma-separated). "
            "Default: all but the daemon's own.",
        ),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="PATH=VALUE",
            help="Only events whose PATH equals VALUE (repeatable, all must match): "
            "data.kb=docs, data.n=3, data.ok=true, 'data.v=\"3\"' for a string.",
        ),
    ] = None,
    payload_format: Annotated[
        PayloadFormat | None,
        typer.Option("--format", help="Body shape: Standard Webhooks JSON, or a chat message."),
    ] = None,
    signature_format: Annotated[
        SignatureFormat | None,
        typer.Option("--signature-format", help="github also sends X-Hub-Signature-256."),
    ] = None,
    ordered: Annotated[
        bool,
        typer.Option(
            "--ordered", help="Strict order: each event waits until the previous one is done."
        ),
    ] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option("--rate-limit", min=0, metavar="N", help="At most N requests a second."),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option("--max-in-flight", min=1, metavar="N",
                     help="Requests open at the receiver at once (1-100)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, metavar="S",
                     help="Seconds per attempt (1-60; a command 1-86400, then its process "
                     "group is killed)."),
    ] = None,
    retry_schedule: Annotated[
        str | None,
        typer.Option(
            "--retry-schedule",
            metavar="LIST",
            help="Delay before each attempt: 0s,5s,5m,30m,2h (default Svix's, 8 attempts).",
        ),
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option(
            "--header", "-H", metavar="'NAME: VALUE'",
            help="Extra request header (repeatable). VALUE may be keyring:NAME, env:VAR or "
            "file:/path; credential-looking values (Authorization, X-Api-Key, *token*...) "
            "are kept in the keyring.",
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option("--owner", metavar="OWNER", help="Who it belongs to (per-owner limit)."),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="A note for people.")
    ] = None,
    generate_secret: GenerateSecretOption = False,
    secret_stdin: SecretStdinOption = False,
    secret_ref: SecretRefOption = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it disabled (nothing is sent).")
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Subscribe an HTTP endpoint, a local command or email addresses to events.

    Each delivery is a POST signed the Standard Webhooks way with the
    subscription's secret: generated unless --secret-stdin or --secret-ref
    is given, and then printed once with how the receiver verifies it.
    With --command each delivery is a run of the program instead (its
    arguments from --arg, never a shell); with --email each delivery is a
    plain-text message over the SMTP server of [email] in palyra.toml.
    Runs and messages are not signed: they have no secret. Failed
    deliveries, runs and messages are retried on the schedule.

    Examples:

    $ palyra subscriptions add ci --url https://ci.example/hook -e 'github.push'
    $ palyra subscriptions add kb --url https://x.example/h --filter data.kb=docs
    $ palyra subscriptions add chat --url "$SLACK_HOOK_URL" --format slack
    $ palyra subscriptions add ops --url env:OPS_HOOK_URL
    $ palyra subscriptions add ci-deploy --command /usr/local/bin/deploy
      --arg '{data.ref}' --events github.push --filter data.ref=refs/heads/main
    $ palyra subscriptions add ops-mail --email ops@example.com -e 'github.*'

    A Slack or Discord URL, or one with a token in its query, is kept in the
    keyring (the registry holds keyring:subscription-url:ID), and so is a
    credential header value (keyring:subscription-header:ID:NAME).
    """
    destination = destination_fields(url, command, args, env, working_dir, max_concurrent,
                                     success_exit_codes, run_as, email)
    fields: JsonObject = {"subscription_id": subscription_id, **destination}
    if url is not None:
        fields["secret"] = secret_source(generate_secret, secret_stdin, secret_ref,
                                         default_generate=True)
    elif generate_secret or secret_stdin or secret_ref is not None:
        usage_error("a command or an email destination is not signed: a secret source is"
                    " for --url only")
    optional: dict[str, Any] = {
        "events": split_list(events),
        "filter": parse_filters(filters),
        "format": payload_format.value if payload_format else None,
        "signature_format": signature_format.value if signature_format else None,
        "ordered": True if ordered else None,
        "rate_limit_per_s": rate_limit,
        "max_in_flight": max_in_flight,
        "timeout_s": timeout,
        "retry_schedule": parse_retry_schedule(retry_schedule),
        "headers": parse_headers(headers),
        "owner": owner,
        "description": description,
        "enabled": False if disabled else None,
        "url_in_keyring": url_in_keyring,
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.add_subscription(fields)
    if json_output:
        output.print_json(answer)
        return
    sub = answer.get("subscription") or {}
    state = "enabled" if sub.get("enabled", True) else "disabled"
    target = (sub.get("url") or " ".join(sub.get("command") or ())
              or ", ".join(sub.get("email") or ()) or url or command)
    output.success(
        f"Added subscription {sub.get('subscription_id', subscription_id)} "
        f"-> {target} ({state})."
    )
    console = output.console()
    new_secret = answer.get("secret")
    if isinstance(new_secret, str) and new_secret:
        console.print(outbound_views.secret_panel(
            new_secret, str(sub.get("subscription_id", subscription_id)),
            sub.get("signature_format"),
        ))
    console.print(outbound_views.subscription_next_steps(sub))


def destination_fields(url: str | None, command: str | None, args: list[str] | None,
                       env: list[str] | None, working_dir: str | None,
                       max_concurrent: int | None, success_exit_codes: list[int] | None,
                       run_as: str | None, email: list[str] | None = None) -> JsonObject:
    """The destination's API fields: exactly one of ``--url``, ``--command`` and
    ``--email``, and the command's options only with ``--command`` (usage errors, exit
    code 2)."""
    command_options = {"--arg": args, "--env": env, "--working-dir": working_dir,
                       "--max-concurrent": max_concurrent,
                       "--success-exit-code": success_exit_codes, "--run-as": run_as}
    if sum(given is not None for given in (url, command, email)) != 1:
        usage_error("give exactly one of --url and --command, or --email", param="--url")
    if command is None:
        for flag, value in command_options.items():
            if value:
                usage_error(f"{flag} is for --command", param=flag)
        return {"url": url} if url is not None else {"email": email}
    assert command is not None
    fields: JsonObject = {"command": [command, *(args or ())]}
    optional: dict[str, Any] = {
        "env": parse_env(env), "working_dir": working_dir, "max_concurrent": max_concurrent,
        "success_exit_codes": success_exit_codes or None, "run_as": run_as,
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    return fields


app.command("update")(update)


@app.command("list")
def list_(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """List subscriptions with their pending deliveries and health.

    Example:

    $ palyra subscriptions list
    """
    run_read(("subscriptions", "list"), state_dir, json_output)


@app.command("show")
def show(subscription_id: IdArgument, state_dir: StateDirOption = None,
         json_output: JsonOption = False) -> None:
    """Show every field of one subscription (its secret reference, never the secret).

    Example:

    $ palyra subscriptions show ci
    """
    run_read(("subscriptions", "show"), state_dir, json_output, subscription_id)


@app.command("remove")
def remove(
    subscription_id: IdArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove a subscription; nothing more is delivered to it.

    Asks for confirmation unless --yes. Without a terminal, --yes is required
    (exit code 2 otherwise, and also when you answer no).

    Example:

    $ palyra subscriptions remove old-ci --yes
    """
    confirm_or_exit(
        yes, question=f"Remove subscription {subscription_id}?", declined="Nothing removed.",
        refusal=f"not removing {subscription_id} without confirmation: add --yes",
    )
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.remove_subscription(subscription_id)
    if json_output:
        output.print_json(answer)
        return
    output.success(f"Removed subscription {answer.get('subscription_id', subscription_id)}.")


@app.command("enable")
def enable(
    subscription_id: IdArgument,
    catch_up: Annotated[
        bool,
        typer.Option(
            "--catch-up",
            help="Also deliver the events published while it was disabled.",
        ),
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start delivering to a subscription again.

    Events published while it was disabled are skipped, unless --catch-up.

    Examples:

    $ palyra subscriptions enable ci
    $ palyra subscriptions enable ci --catch-up
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.enable_subscription(subscription_id, catch_up=catch_up)
    if json_output:
        output.print_json(answer)
        return
    if catch_up:
        output.success(f"Enabled {subscription_id}; it catches up on the events it missed.")
    else:
        output.success(
            f"Enabled {subscription_id}; events published while it was disabled are skipped "
            "(--catch-up delivers them)."
        )


@app.command("disable")
def disable(subscription_id: IdArgument, state_dir: StateDirOption = None,
            json_output: JsonOption = False) -> None:
    """Stop delivering to a subscription (nothing is queued while it is disabled).

    Example:

    $ palyra subscriptions disable ci
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.disable_subscription(subscription_id)
    if json_output:
        output.print_json(answer)
        return
    output.success(f"Disabled {subscription_id}.")


@app.command("rotate-secret")
def rotate_secret(
    subscription_id: IdArgument,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="DURATION",
            help="How long deliveries also carry the old signature (0 ends it now).",
        ),
    ] = "24h",
    generate_secret: GenerateSecretOption = False,
    secret_stdin: SecretStdinOption = False,
    secret_ref: SecretRefOption = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Replace a subscription's signing secret, signing with both for a grace period.

    During --grace every delivery carries a signature from each secret, so
    the receiver can switch at its own pace. Without a source flag a new
    secret is generated and printed once. Only a --url subscription has a
    secret: for a command or an email one the daemon answers not_signed.

    Examples:

    $ palyra subscriptions rotate-secret ci
    $ palyra subscriptions rotate-secret ci --grace 1h --secret-stdin < new.txt
    """
    grace_s = duration_option(grace, "--grace")
    secret = secret_source(generate_secret, secret_stdin, secret_ref, default_generate=True)
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.rotate_subscription_secret(
            subscription_id, grace_s=grace_s, secret=secret
        )
    if json_output:
        output.print_json(answer)
        return
    sub = answer.get("subscription") or {}
    console = output.console()
    output.success(f"Rotated the signing secret of {subscription_id}.")
    new_secret = answer.get("secret")
    if isinstance(new_secret, str) and new_secret:
        console.print(outbound_views.secret_panel(
            new_secret, subscription_id, sub.get("signature_format")
        ))
    until = output.moment(answer.get("previous_valid_until"))
    console.print(outbound_views.rotation_note(sub, until=until, secret_shown=bool(new_secret)))


def delivered(answer: JsonObject) -> bool:
    """The test delivery succeeded: the daemon says so, or its first attempt got a 2xx (a
    command: exited with one of its success codes; an email: the server took it)."""
    delivery = answer.get("delivery") or {}
    if delivery.get("status") == "succeeded":
        return True
    attempt = answer.get("attempt")
    if not isinstance(attempt, dict):
        return False
    code = attempt.get("status_code")
    if outbound_views.is_command_attempt(attempt) or outbound_views.is_email_attempt(attempt):
        return isinstance(code, int) and not attempt.get("error_class")
    return isinstance(code, int) and 200 <= code < 300 and not attempt.get("error_class")


@app.command("test")
def test(
    subscription_id: IdArgument,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", metavar="JSON|@FILE", help="The event's data: JSON, @file or @-."
        ),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send a palyra.test event to this subscription alone and show the attempt.

    Waits for the first attempt (up to the subscription's timeout plus 5 s)
    and prints its status code, duration, error class and the start of the
    response. Exits 4 unless the delivery succeeded (a 2xx answer).

    Examples:

    $ palyra subscriptions test ci
    $ palyra subscriptions test ci -d '{"hello": "world"}' --json
    """
    body: JsonObject = {}
    loaded = load_data(data)
    if loaded is not None:
        body["data"] = loaded
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.test_subscription(subscription_id, body)
    if json_output:
        output.print_json(answer)
    else:
        output.console().print(outbound_views.test_result(answer, subscription_id))
    if not delivered(answer):
        if not json_output:
            delivery = answer.get("delivery") or {}
            if delivery.get("delivery_id"):
                output.error(
                    f"the test delivery did not succeed (status {delivery.get('status', '?')}); "
                    f"see palyra deliveries show {delivery['delivery_id']}"
                )
            else:
                output.error(
                    "no attempt within the wait; see palyra deliveries list "
                    f"--subscription {subscription_id}"
                )
        check_failed()
