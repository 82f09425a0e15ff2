"""Command-line values coerced without pydantic, for the plain types palyra's commands use.

Typer (0.2x) coerces every non-flag value through a pydantic ``TypeAdapter`` built on first
use, so the first ``--state-dir DIR`` of a run imports pydantic and builds a schema: about
150 ms, more than all the rest of a command. ``install()`` gives each parameter a
coercion that settles the common cases itself (a ``str``, a ``Path``, a list of ``str``, an
``int`` or ``float`` within its bounds, an enum choice) and hands everything else, including
every value it would not accept, to Typer's own coercion, built only then. So results and
error messages are Typer's; only the cost differs. ``tests/test_cli_offline.py`` checks the
two agree on every parameter of the command tree.

This reaches into Typer's private coercion layer (``typer._coercion``, and the
``get_runtime_param`` hook of ``typer.core._TyperParameter``); ``palyra_py.cli.main`` skips
``install()`` when that layer is not there, so a Typer that changes it makes the CLI slower,
never different. The same test fails then, so that the change is noticed.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_choice, coerce_cli_path
from typer.core import _TyperParameter

if TYPE_CHECKING:
    from typer import _click


class _Unsure:
    """Marker: the plain path does not decide this value; Typer's coercion will."""


UNSURE = _Unsure()


def plain_value(descriptor: TypeDescriptor, value: Any, param: _TyperParameter,
                ctx: _click.Context) -> Any:
    """The coerced ``value`` (not None) when it is one of the plain cases, else ``UNSURE``.
    May raise for a value Typer would reject; the caller then defers to Typer."""
    annotation: Any = descriptor.annotation
    info = descriptor.parameter_info
    if info.parser is not None or descriptor.file_annotation is not None:
        return UNSURE
    if annotation is str:
        return value if isinstance(value, str) else UNSURE
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return list(value)
        return UNSURE
    if annotation is Path and info.path_type is None:
        if isinstance(value, str):
            value = Path(value)
        if not isinstance(value, Path):
            return UNSURE
        # With a Path in hand Typer's own checks (exists, file_okay, ...) run without
        # pydantic; a failure is redone by Typer so that its message quotes the raw text.
        return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
    if annotation is int or annotation is float:
        return _number(annotation, value, info.min, info.max, clamp=bool(info.clamp))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return coerce_cli_choice(
            value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx
        )
    return UNSURE


def _number(kind: type[Any], value: Any, low: float | None, high: float | None, *,
            clamp: bool) -> Any:
    if clamp or isinstance(value, bool):
        return UNSURE
    if isinstance(value, str):
        # Plain decimals only; anything fancier (signs, spaces, underscores, exponents)
        # goes to Typer, which knows what pydantic accepts.
        whole, dot, fraction = value.partition(".") if kind is float else (value, "", "")
        if not _digits(whole) or (dot and not _digits(fraction)):
            return UNSURE
        number = kind(value)
    elif type(value) is int or (kind is float and type(value) is float):
        number = kind(value)
    else:
        return UNSURE
    if (low is not None and number < low) or (high is not None and number > high):
        return UNSURE
    return number


def _digits(text: str) -> bool:
    return 0 < len(text) <= 15 and text.isascii() and text.isdigit()


class PlainRuntimeParam(RuntimeParam):
    """A parameter's coercion: the plain path first, Typer's (built once, on first need)
    for everything the plain path leaves undecided."""

    descriptor: TypeDescriptor
    _typer: list[RuntimeParam]

    # Not a dataclass of its own (RuntimeParam is a frozen one): generating its methods
    # would cost more start-up than everything else in this module.
    def __init__(self, descriptor: TypeDescriptor) -> None:
        super().__init__(parameter_info=descriptor.parameter_info,
                         annotation=descriptor.annotation)
        object.__setattr__(self, "descriptor", descriptor)
        object.__setattr__(self, "_typer", [])

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: _click.Context) -> Any:
        try:
            result = plain_value(self.descriptor, value, param, ctx)
        except Exception:  # Typer redoes it and raises its own error
            result = UNSURE
        if result is not UNSURE:
            return result
        return self.typer_coercion()._coerce_value(value, param=param, ctx=ctx)

    def typer_coercion(self) -> RuntimeParam:
        """Typer's own coercion for this parameter (imports pydantic)."""
        if not self._typer:
            self._typer.append(build_runtime_param(self.descriptor))
        return self._typer[0]


def install() -> None:
    """Make every Typer parameter in this process coerce through ``PlainRuntimeParam``.

    Class-wide, because Typer creates some parameters (each command's ``--help``) only
    while parsing; the outcome of a coercion is Typer's either way. Idempotent."""
    if getattr(_TyperParameter.get_runtime_param, "palyra_plain", False):
        return

    def get_runtime_param(self: _TyperParameter) -> RuntimeParam:
        if self._runtime_param is None:
            self._runtime_param = PlainRuntimeParam(self.type_descriptor)
        return self._runtime_param

    get_runtime_param.palyra_plain = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
