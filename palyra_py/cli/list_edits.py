"""How ``update`` commands change a list field: replace it, or add to and remove from it.

``--events A --events B`` replaces the whole list (as ``add`` sets it); ``--add-event`` and
``--remove-event`` change the list the daemon holds now; ``--all-events`` empties it, which
means "every event". Every refusal is a usage error (exit code 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from palyra_py.cli.session import usage_error
from palyra_py.cli.webhook_inputs import split_list


@dataclass(frozen=True, slots=True)
class ListEdit:
    """The flags given for one list field, each repeatable or comma-separated."""

    replace: list[str] | None
    add: list[str] | None
    remove: list[str] | None
    everything: bool
    flags: tuple[str, str, str, str]
    """The flags' names for messages: replace, add, remove, everything."""

    @classmethod
    def of(cls, replace: list[str] | None, add: list[str] | None, remove: list[str] | None,
           everything: bool, flags: tuple[str, str, str, str]) -> ListEdit:
        return cls(split_list(replace), split_list(add), split_list(remove), everything,
                   flags)

    @property
    def given(self) -> bool:
        return self.everything or any(
            given is not None for given in (self.replace, self.add, self.remove))

    @property
    def needs_current(self) -> bool:
        """Whether the result depends on the list the daemon holds now."""
        return self.replace is None and not self.everything and (
            self.add is not None or self.remove is not None)

    def check(self) -> None:
        """Refuse flags that exclude each other (before the daemon is asked anything)."""
        replace_flag, add_flag, remove_flag, all_flag = self.flags
        if not self.everything:
            return
        for flag, value in ((replace_flag, self.replace), (add_flag, self.add),
                            (remove_flag, self.remove)):
            if value is not None:
                usage_error(f"{all_flag} and {flag} exclude each other", param=all_flag)

    def apply(self, current: Sequence[str]) -> list[str] | None:
        """The new list (``None``: no flag given, nothing changes). ``current`` is read only
        for ``--add-*``/``--remove-*`` alone."""
        _, _, remove_flag, all_flag = self.flags
        self.check()
        if not self.given:
            return None
        if self.everything:
            return []
        items = list(self.replace if self.replace is not None else current)
        for item in self.add or ():
            if item not in items:
                items.append(item)
        for item in self.remove or ():
            if item not in items:
                usage_error(f"{item!r} is not in the list ({', '.join(items) or 'empty'})",
                            param=remove_flag)
            items.remove(item)
        if not items:
            usage_error(f"that leaves the list empty, which means every one: say so with"
                        f" {all_flag}", param=remove_flag)
        return items
