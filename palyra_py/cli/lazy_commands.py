"""Command groups whose subcommands are built when first looked up.

Typer builds the whole command tree before it parses anything: every command of every
group, reading each function's signature and annotations. ``LazyCommands`` stands in for a
group's ``commands`` mapping: its names are known up front (for dispatch and "did you mean"
suggestions); a command is built by Typer's own functions the first time it is looked up,
so a run builds only the commands on its path. Help pages and completion, which list a
group, build all of its commands, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.core import MarkupMode, TyperGroup
from typer.models import CommandInfo, TyperInfo

if TYPE_CHECKING:
    from typer import _click

Builder = Callable[[], "_click.Command"]


class LazyCommands(MutableMapping[str, "_click.Command"]):
    """A group's subcommands by name, in the given order, each built on first lookup."""

    def __init__(self, builders: dict[str, Builder]) -> None:
        self._builders = builders
        self._built: dict[str, _click.Command] = {}

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._built:
            if name not in self._builders:
                raise KeyError(name)
            self._built[name] = self._builders[name]()
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._built[name] = command
        self._builders.setdefault(name, lambda: command)

    def __delitem__(self, name: str) -> None:
        del self._builders[name]
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


class TreeSettings:
    """What Typer passes down from the root application to every group and command."""

    def __init__(self, *, pretty_exceptions_short: bool, suggest_commands: bool,
                 rich_markup_mode: MarkupMode) -> None:
        self.pretty_exceptions_short = pretty_exceptions_short
        self.suggest_commands = suggest_commands
        self.rich_markup_mode = rich_markup_mode


def registration(sub_app: typer.Typer, name: str) -> TyperInfo:
    """The record ``parent.add_typer(sub_app, name=name)`` makes, for ``lazy_group``."""
    parent = typer.Typer()
    parent.add_typer(sub_app, name=name)
    return parent.registered_groups[0]


def lazy_group(info: TyperInfo, settings: TreeSettings) -> TyperGroup:
    """The group Typer would build from ``info`` (an ``add_typer`` registration), with its
    commands and subgroups built on first lookup."""
    sub_app = info.typer_instance
    assert sub_app is not None, "a registration names its Typer"
    # Typer builds the group itself (options, callback, help) from a copy that has no
    # commands; they come from the same registrations, one at a time.
    bare = copy.copy(sub_app)
    bare.registered_commands, bare.registered_groups = [], []
    bare_info = copy.copy(info)
    bare_info.typer_instance = bare
    group = typer.main.get_group_from_info(
        bare_info,
        pretty_exceptions_short=settings.pretty_exceptions_short,
        suggest_commands=settings.suggest_commands,
        rich_markup_mode=settings.rich_markup_mode,
    )
    builders: dict[str, Builder] = {}
    for command_info in sub_app.registered_commands:
        assert command_info.callback is not None, "a command has a function"
        name = command_info.name or typer.main.get_command_name(command_info.callback.__name__)
        builders[name] = _command_builder(command_info, settings)
    for group_info in sub_app.registered_groups:
        group_name = typer.main.solve_typer_info_defaults(group_info).name
        # Typer merges the commands of a group added without a name into its parent; no
        # palyra group is added that way, and this builder does not handle it.
        assert group_name, "every palyra subgroup has a name"
        builders[group_name] = _group_builder(group_info, settings)
    group.commands = LazyCommands(builders)
    return group


def _command_builder(info: CommandInfo, settings: TreeSettings) -> Builder:
    return lambda: typer.main.get_command_from_info(
        info,
        pretty_exceptions_short=settings.pretty_exceptions_short,
        rich_markup_mode=settings.rich_markup_mode,
    )


def _group_builder(info: TyperInfo, settings: TreeSettings) -> Builder:
    return lambda: lazy_group(info, settings)
