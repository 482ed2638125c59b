"""The ``refbench`` command line: a click group whose subcommands load on first use.

Each subcommand lives in its own module here; `COMMANDS` maps its name to ``module:object``.
A `RefbenchError` becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from refbench.errors import RefbenchError

# name -> "module:attribute" (relative to refbench.cli); imported only when used.
COMMANDS: dict[str, str] = {
    "list": "listing:list_command",
    "eval": "eval:eval_command",
    "score": "eval:score_command",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"refbench.cli.{module_name}")
        return getattr(module, attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refbench")
def cli() -> None:
    """refbench: benchmark weakly-supervised referring image segmentation."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors exit 2 with one line, interrupts exit 130."""
    try:
        result = cli.main(args=argv, prog_name="refbench", standalone_mode=False)
    except RefbenchError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0



def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
