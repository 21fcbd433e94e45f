"""The ``zoo`` command line.

Each command is a few lines that call library functions. Heavy modules (torch and
everything that imports it) are imported inside the commands, so ``zoo --help`` is instant.
A :class:`~zoo.errors.ZooError` becomes one line on stderr and a non-zero exit; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from zoo import __version__
from zoo.errors import ZooError


class _ZooGroup(click.Group):
    """A click group that turns ZooError into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as e:
            if ctx.meta.get("zoo.debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug logs).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """zoo: a plugin-based model zoo for PyTorch image classifiers.

    \b
    zoo models                       list registered architectures
    zoo train recipes/quickstart.yaml  train, evaluate and publish a recipe
    zoo check 'mlpmixer_*'           run the conformance kit on models
    """
    ctx.meta["zoo.debug"] = debug
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    cli(prog_name="zoo")


# -- registry ------------------------------------------------------------------------------


@cli.command("models")
@click.argument("pattern", default="*")
@click.option("--pretrained", is_flag=True, help="List published weights as NAME.TAG instead.")
@click.option("--plugin", default=None, help="Only models provided by this distribution.")
@click.option("--params", is_flag=True, help="Count parameters (builds each model on 'meta').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(
    pattern: str, pretrained: bool, plugin: str | None, params: bool, as_json: bool
) -> None:
    """List registered models matching PATTERN (fnmatch wildcards, e.g. 'mlpmixer_*').

    timm architectures from the zoo-timm plugin appear as 'timm/<name>'; they are listed only
    when the pattern asks for them (e.g. 'timm/*' or 'timm/resnet*').
    """
    from zoo.registry import list_models, model_info

    names = list_models(pattern, pretrained=pretrained, plugin=plugin)
    rows = []
    for name in names:
        base = name.rsplit(".", 1)[0] if pretrained else name
        info = model_info(base, params=params) if params else {"name": base}
        rows.append({"name": name, **({"params": info["params"]} if params else {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models match {pattern!r}", err=True)
        return
    for row in rows:
        suffix = f"  {row['params']:>13,}" if params else ""
        click.echo(f"{row['name']:<40}{suffix}")


@cli.command("info")
@click.argument("name")
@click.option("--plugin", default=None, help="Distribution to take NAME from when ambiguous.")
def info_cmd(name: str, plugin: str | None) -> None:
    """Show a model's metadata, default arguments and parameter count."""
    from zoo.registry import model_info

    info = model_info(name, plugin=plugin, params=True)
    click.echo(json.dumps(info, indent=2, default=str))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_cmd(as_json: bool) -> None:
    """List every plugin (zoo.models entry point): distribution, version, code location,
    models, and the error if it failed to load."""
    from dataclasses import asdict

    from zoo.plugins import autoload_disabled, load_plugins

    plugins = load_plugins()
    if as_json:
        click.echo(json.dumps([asdict(p) for p in plugins], indent=2))
        return
    for p in plugins:
        status = "ERROR" if p.error else "ok"
        kind = " (built-in)" if p.builtin else ""
        click.echo(f"{p.distribution} {p.version}{kind}  [{p.name} -> {p.module}]  {status}")
        click.echo(f"    location: {p.location or '-'}")
        if p.error:
            click.echo(f"    error: {p.error}")
        else:
            shown = ", ".join(p.models[:8]) + (" ..." if len(p.models) > 8 else "")
            click.echo(f"    models ({len(p.models)}): {shown or '-'}")
    if autoload_disabled():
        click.echo("third-party plugins are disabled (ZOO_DISABLE_PLUGIN_AUTOLOAD is set)")


if __name__ == "__main__":  # pragma: no cover
    main()
