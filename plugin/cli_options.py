"""Command-line options made from the settings schema: one typer option per field that has one
(name, short flag, type, help with the allowed values, the default shown), added to a command's
signature by `setting_options`; their values come back as {field name: value or None}."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Optional

import typer

from .schema import SCHEMA, Field


def option_fields(fields: Iterable[Field] = SCHEMA) -> tuple[Field, ...]:
    return tuple(f for f in fields if f.option)


def help_text(f: Field) -> str:
    """The option's help: the schema's help, then what it accepts (for sliders and choices)."""
    text = f.help
    if f.type in ("int", "float", "choice"):
        text += f" [{f.allowed()}]"
    return text.replace("[", "\\[")  # rich markup: keep the brackets


def default_text(f: Field) -> str:
    if f.secret:
        return ""
    if f.default is None:
        return "none"
    if f.type == "bool":
        return "true" if f.default else "false"
    return str(f.default)


def _option(f: Field) -> tuple[Any, Any]:
    """(annotation, typer.Option) of a field: None means "not given" (the file or the default wins)."""
    names = [f.option] + ([f.cli_short] if f.cli_short else [])
    if f.type == "bool":
        names = [f"{f.option}/--no-{f.option[2:]}"] + names[1:]
    kind = {"int": int, "float": float, "bool": bool}.get(f.type, str)  # int_list: "32,45"
    return Optional[kind], typer.Option(None, *names, help=help_text(f), show_default=default_text(f) or False,
                                        rich_help_panel=f"{f.group} ({'live' if f.live else 'at start'})")


def setting_options(fields: Iterable[Field] = SCHEMA) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command gets one option per field (its keyword arguments named like the
    fields); the function receives them as keyword arguments next to its own parameters."""
    chosen = option_fields(fields)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = []
        for f in chosen:
            annotation, default = _option(f)
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=annotation))

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            return func(**kwargs)

        command.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return decorate


def given(values: dict[str, Any], fields: Iterable[Field]) -> dict[str, Any]:
    """The values of `fields` among a command's keyword arguments (None: not given)."""
    return {f.name: values.get(f.name) for f in fields}
