"""click parameter types: values are validated where they are parsed, with the fix in the message."""

from __future__ import annotations

from typing import Any

import click


class KeyValue(click.ParamType):
    """``KEY=VALUE``; with ``typed``, the value is read as a YAML scalar, so ``anon=true`` gives a bool."""

    name = "KEY=VALUE"

    def __init__(self, key_name: str = "KEY", typed: bool = True) -> None:
        self.key_name = key_name
        self.typed = typed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key or not raw:
            self.fail(f"{value!r} is not {self.key_name}=VALUE (for example sentiment=s3://models/sst2/)", param, ctx)
        if not self.typed:
            return key, raw
        import yaml

        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError:
            parsed = raw
        return key, parsed if isinstance(parsed, (bool, int, float)) else raw
