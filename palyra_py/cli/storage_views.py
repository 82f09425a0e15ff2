"""What ``palyra storage copy`` shows: the rate column of its progress bars, the report
at the end (per store, the chain's check, notes) and the settings that switch the node
to the copy. The target is named by its reference or its URI without the password."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import ProgressColumn, Task
from rich.text import Text

from palyra_py.cli import output

if TYPE_CHECKING:
    from palyra_py.server.store_catalog import CopyReport


class RateColumn(ProgressColumn):
    """``1,234 events/s`` (rich's own speed estimate of the task)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = str(task.fields.get("unit", ""))
        return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="cyan")


def switch_settings(to_ref: str | None, key_ref: str) -> str:
    """The ``palyra.toml`` lines that put this node on the copy."""
    dsn = (f'dsn_ref = "{to_ref}"' if to_ref else
           'dsn_ref = "file:/etc/palyra/dsn"   # a 0600 file holding the URI copied into')
    lines = ["[storage]", 'backend = "postgres"', dsn]
    if key_ref:
        lines += ["", "[secrets]", f'key_ref = "{key_ref}"']
    return "\n".join(lines)


def copy_document(report: CopyReport, target: str, to_ref: str | None, key_ref: str,
                  state_dir: Path) -> dict[str, Any]:
    return {
        "source": report.source,
        "target": target,
        "resumed": report.resumed,
        "stores": [{**done._asdict(), "notes": list(done.notes)} for done in report.stores],
        "chain": report.chain._asdict(),
        "verified": report.chain.first_broken_seq is None,
        "settings": switch_settings(to_ref, key_ref),
    }


def print_copy_report(report: CopyReport, target: str, to_ref: str | None, key_ref: str,
                      state_dir: Path) -> None:
    rows = [[done.store, str(done.copied), str(done.already)] for done in report.stores]
    output.console().print(output.table(["store", "copied now", "there before"], rows))
    for done in report.stores:
        for note in done.notes:
            output.note(f"{done.store}: {note}")
    chain = report.chain
    if chain.first_broken_seq is not None:
        output.error(f"the copy's chain does not verify: broken at seq"
                     f" {chain.first_broken_seq} ({chain.reason})")
        return
    output.success(f"Copied {report.source} into {target}; its chain verifies"
                   f" ({chain.checked} events, seq {chain.first_seq}..{chain.last_seq}).")
    steps = [f"To switch this node to the copy, with the daemon stopped, put in"
             f" {state_dir / 'palyra.toml'}:", "", switch_settings(to_ref, key_ref), ""]
    steps.append("then start the daemon and run `palyra system events verify`. The registry is"
                 " the database's from then on (`palyra registry export` shows it); "
                 f"{state_dir / 'webhooks.toml'} stays as it was, for the way back.")
    output.console().print(Text("\n".join(steps)))
