"""How ``palyra daemon status`` looks to people (``--json`` bypasses all of this).

rich is imported inside the function that builds its objects, so that importing this
module costs nothing when the output is ``--json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from palyra_py.cli import output


def _connections(ingress: Any) -> str:
    """``3 of 1024`` open on the ingress listener (``-`` when the daemon did not say), and
    the live streams there, which have their own cap."""
    if not isinstance(ingress, dict) or "connections" not in ingress:
        return "-"
    text = (f"{output.text(ingress.get('connections'))} of "
            f"{output.text(ingress.get('max_connections'))} (ingress)")
    if ingress.get("streams"):
        text += f", {output.text(ingress.get('streams'))} streams"
    return text


def _open_files(value: Any) -> str:
    """``limit 8192, the caps need 3344``, or the warning when the limit lowered them."""
    if not isinstance(value, dict) or value.get("limit") is None:
        return "-"
    if value.get("warning"):
        return f"[yellow]{output.text(value.get('warning'))}[/]"
    return (f"limit {output.text(value.get('limit'))}, "
            f"the caps need {output.text(value.get('needed'))}")


def _listeners(value: Any) -> str:
    """One line per listener: ``ingress  http://...`` (plain strings are kept as is)."""
    if not isinstance(value, list) or not value:
        return output.text(value)
    lines = []
    for item in value:
        if isinstance(item, dict):
            lines.append(f"{output.text(item.get('kind'))}  {output.text(item.get('address'))}")
        else:
            lines.append(output.text(item))
    return "\n".join(lines)


def _processes(value: Any) -> str:
    """One line per process: ``control  pid 123  started ...  restarts 0`` (``-`` when
    the daemon did not say)."""
    if not isinstance(value, list) or not value:
        return "-"
    lines = []
    for item in value:
        if not isinstance(item, dict):
            continue
        role = output.text(item.get("role"))
        if item.get("index") is not None:
            role += f" {output.text(item.get('index'))}"
        line = (f"{role}  pid {output.text(item.get('pid'))}  started "
                f"{output.moment(item.get('started_at'))}  restarts "
                f"{output.text(item.get('restarts'))}")
        if item.get("accepted") is not None:
            line += f"  accepted {output.text(item.get('accepted'))}"
        lines.append(line)
    return "\n".join(lines)


def _cluster_rows(cluster: Any) -> list[tuple[str, str]]:
    """Cluster mode: this node, then one line per node (state, heartbeat age, leases)."""
    if not isinstance(cluster, dict):
        return []
    rows = [("cluster node", f"{output.text(cluster.get('node_id'))}  lease "
             f"{output.text(cluster.get('lease_s'))} s, heartbeat "
             f"{output.text(cluster.get('heartbeat_s'))} s, fair share "
             f"{output.text(cluster.get('fair_share'))}, takeovers "
             f"{output.text(cluster.get('lease_takeovers'))}")]
    lines = []
    for node in cluster.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        state = output.text(node.get("state"))
        if state != "live":
            state = f"[yellow]{state}[/]"
        leases = [output.text(x.get("subscription_id")) for x in node.get("leases") or []
                  if isinstance(x, dict)]
        this = " (this node)" if node.get("this_node") else ""
        line = (f"{output.text(node.get('node_id'))}{this}"
                f"  {state}  heartbeat {output.text(node.get('heartbeat_age_s'))} s ago"
                f"  {output.text(node.get('host'))} pid {output.text(node.get('pid'))}"
                f"  leases {len(leases)}{': ' + ', '.join(leases) if leases else ''}")
        lines.append(line)
    rows.append(("cluster nodes", "\n".join(lines) or "-"))
    if cluster.get("problem"):
        rows.append(("cluster problem",
                     f"[red]{output.text(cluster['problem'])} (as last read)[/]"))
    return rows


def show_status(answer: Mapping[str, Any]) -> int:
    """``palyra daemon status`` for people; the exit code."""
    journal = answer.get("journal") or {}
    deliveries = answer.get("deliveries") or {}
    integrations = answer.get("integrations") or {}
    keyring = answer.get("keyring") or {}
    by_readiness = integrations.get("by_readiness") or {}

    keyring_text = output.text(keyring.get("backend"))
    if keyring.get("fallback"):
        keyring_text += " [yellow](fallback: no OS keyring available)[/]"
    counts = [f"{output.readiness(name)} {n}" for name, n in by_readiness.items() if n]
    integrations_text = output.text(integrations.get("total"))
    if counts:
        integrations_text += f" ({', '.join(counts)})"
    daemon_rows = [
        ("version", output.text(answer.get("version"))),
        ("pid", output.text(answer.get("pid"))),
        ("started", output.moment(answer.get("started_at"))),
        ("uptime", output.duration(answer.get("uptime_s"))),
        ("state dir", output.text(answer.get("state_dir"))),
        ("admin socket", output.text(answer.get("admin_socket"))),
        ("listeners", _listeners(answer.get("listeners"))),
        ("processes", _processes(answer.get("processes"))),
        ("connections", _connections(answer.get("ingress"))),
        ("open files", _open_files(answer.get("open_files"))),
        ("journal", output.text(journal.get("path"))),
        ("journal size", output.size(journal.get("size_bytes"))),
        ("last seq", output.text(journal.get("last_seq"))),
        *([("journal problem", f"[red]{output.text(journal['problem'])}[/]")]
          if journal.get("problem") else []),
        ("deliveries", output.text(deliveries.get("path"))),
        *([("deliveries problem", f"[red]{output.text(deliveries['problem'])}[/]")]
          if deliveries.get("problem") else []),
        ("retention", output.text(journal.get("retention"))),
        ("integrations", integrations_text),
        *[(f"warning {output.text(w.get('integration_id'))}",
           f"[yellow]{output.text(w.get('warning'))}[/]")
          for w in integrations.get("warnings") or []],
        ("keyring", keyring_text),
        *([("warning secrets", f"[yellow]{output.text(keyring['warning'])}[/]")]
          if keyring.get("warning") else []),
        *_cluster_rows(answer.get("cluster")),
    ]
    settings = answer.get("settings") or []
    settings_table = output.table(
        ("section", "key", "value", "source"),
        (
            (
                output.text(item.get("section")),
                output.text(item.get("key")),
                output.text(item.get("value")),
                output.text(item.get("source")),
            )
            for item in settings
        ),
        title="Effective settings",
    )
    from rich.panel import Panel

    console = output.console()
    console.print(Panel(output.key_value_table(daemon_rows), title="palyra daemon", expand=False))
    console.print(settings_table)
    return 0
