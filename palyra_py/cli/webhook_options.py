"""Options that ``palyra webhooks add`` and ``webhooks update`` share."""

# No `from __future__ import annotations`: these aliases are read by Typer at run time.

from typing import Annotated

import typer

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Integration id.", show_default=False)
]
DisplayNameOption = Annotated[
    str | None, typer.Option("--display-name", help="A human name for listings.")
]
SourcesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--sources",
        metavar="CIDR",
        help="Accept only from these addresses (repeatable). Default: anywhere.",
    ),
]
MaxPayloadOption = Annotated[
    int | None, typer.Option("--max-payload-bytes", min=1, metavar="N", help="Body limit.")
]
TimestampToleranceOption = Annotated[
    str | None,
    typer.Option(
        "--timestamp-tolerance",
        metavar="DURATION",
        help="Largest clock skew for signed timestamps (300, 5m).",
    ),
]
ReplayWindowOption = Annotated[
    str | None,
    typer.Option(
        "--replay-window",
        metavar="DURATION",
        help="How long delivery ids are remembered to drop duplicates (7d).",
    ),
]
ResponseStatusOption = Annotated[
    int | None,
    typer.Option("--response-status", min=200, max=299, metavar="2XX",
                 help="Status of the answer to the sender (2xx only; default 200)."),
]
ResponseBodyOption = Annotated[
    str | None,
    typer.Option("--response-body", metavar="TEXT",
                 help="Static answer to the sender; also the fallback of --response-command."),
]
ResponseContentTypeOption = Annotated[
    str | None,
    typer.Option("--response-content-type", metavar="TYPE",
                 help="Content type of the answer (default text/plain; charset=utf-8)."),
]
ResponseCommandOption = Annotated[
    str | None,
    typer.Option("--response-command", metavar="PROGRAM",
                 help="Run PROGRAM (never a shell) with the payload on stdin once the event"
                      " is journaled; its stdout is the answer."),
]
ResponseArgOption = Annotated[
    list[str] | None,
    typer.Option("--response-arg", metavar="ARG",
                 help="An argument of --response-command (repeatable, in order, as given)."),
]
ResponseTimeoutOption = Annotated[
    float | None,
    typer.Option("--response-timeout", metavar="SECONDS", min=0.001, max=10.0,
                 help="How long --response-command may take (at most 10; default 2.5)."),
]
