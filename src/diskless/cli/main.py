"""The ``diskless`` command: the root typer app, its global options, and the top-level commands.

The root app owns ``--config``/``DISKLESS_CONFIG`` and ``--version``, stores a
:class:`~diskless.cli.output.CliState` on ``ctx.obj`` for every sub-command, and is the one place
where an expected failure (:class:`~diskless.errors.DisklessError`) becomes a one-line message
and an exit status instead of a traceback. Sub-apps live in their own modules: ``image``,
``disk`` and ``export`` work on local storage; ``machine``, ``discovered``, ``group``,
``token``, ``settings`` and the top-level ``status``, ``images``, ``audit`` and ``events`` talk
to the running server's admin API (:mod:`diskless.cli.client`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from typer.core import TyperGroup

from diskless import __version__, runtime
from diskless.cli import discovered, disk, group, image, machine, server, server_settings, token
from diskless.cli.export import export
from diskless.cli.output import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    CliState,
    ConfigOption,
    JsonOption,
    fail,
    get_state,
)
from diskless.config import Settings, load_settings
from diskless.errors import ConfigError, DisklessError

__all__ = ["app"]


class _DisklessGroup(TyperGroup):
    """The root command group: maps expected failures to one line on stderr and an exit status."""

    # ``Any``: typer vendors click privately, so its Context class is not public API to name here.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            fail(str(exc), code=EXIT_CONFIG)
        except DisklessError as exc:
            fail(str(exc), code=EXIT_FAILURE)


app = typer.Typer(
    cls=_DisklessGroup,
    help="diskless: a diskless network-boot server.",
    no_args_is_help=True,
    # Tracebacks with locals are for bugs; expected failures never reach typer's handler.
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(help="Show or check the configuration.", no_args_is_help=True)

app.add_typer(image.app, name="image")
app.add_typer(disk.app, name="disk")
app.add_typer(config_app, name="config")
app.add_typer(machine.app, name="machine")
app.add_typer(discovered.app, name="discovered")
app.add_typer(group.app, name="group")
app.add_typer(token.app, name="token")
app.add_typer(server_settings.app, name="settings")
app.command()(export)
app.command()(server.status)
app.command()(server.images)
app.command()(server.audit)
app.command()(server.events)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"diskless {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: ConfigOption = None,
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar="DISKLESS_API_URL",
            help="Base URL of the admin API (default: http://api.host:api.port).",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="API token (default: the api.token setting, i.e. DISKLESS_API__TOKEN).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    # Settings are loaded lazily by the state, so `config check` and `--help` work even when
    # the default configuration is broken.
    del version  # Handled by its eager callback.
    ctx.obj = CliState(config_path=config, api_url=api_url, api_token=token)


@app.command()
def serve(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run the server in the foreground until SIGINT or SIGTERM."""
    state = get_state(ctx)
    state.use_config(config)
    raise typer.Exit(runtime.serve(state.settings))


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print the effective settings (file, then DISKLESS_* overrides, then defaults) as TOML."""
    settings = get_state(ctx).settings
    if as_json:
        typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
    else:
        sys.stdout.write(_settings_toml(settings))


@config_app.command("check")
def config_check(
    path: Annotated[Path, typer.Argument(help="TOML file to validate.", dir_okay=False)],
) -> None:
    """Validate a configuration file; exit 2 naming each bad key, 0 if it is usable."""
    load_settings(path)
    typer.echo(f"{path}: ok")


def _settings_toml(settings: Settings) -> str:
    """TOML for ``settings``, each key preceded by its description as a comment.

    The settings hold only scalars and one level of sections, so a few lines replace a TOML
    writer dependency; ``tests/cli`` checks that ``tomllib`` reads the output back unchanged.
    """
    scalars: list[str] = []
    sections: list[str] = []
    for name, value in settings.model_dump(mode="json").items():
        nested = getattr(settings, name)
        if isinstance(nested, BaseModel):
            sections.append(f"\n[{name}]\n" + "".join(_toml_lines(nested, value)))
        else:
            scalars.extend(_toml_lines(settings, {name: value}))
    return "".join(scalars) + "".join(sections)


def _toml_lines(model: BaseModel, values: dict[str, Any]) -> list[str]:
    fields = type(model).model_fields
    lines: list[str] = []
    for name, value in values.items():
        description = fields[name].description
        if description:
            lines.append(f"# {description}\n")
        if value is None:
            # TOML has no null: an unset optional key is shown commented out.
            lines.append(f"# {name} = (not set)\n")
            continue
        lines.append(f"{name} = {_toml_value(value)}\n")
    return lines


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is also a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
