"""The ``refbench`` command line: a click group whose subcommands load on first use.

Each subcommand lives in its own module here; `COMMANDS` maps its name to ``module:object``.
A `RefbenchError` becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping

import click

from refbench.errors import RefbenchError

# name -> "module:attribute" (relative to refbench.cli); imported only when used.
COMMANDS: dict[str, str] = {
    "compare": "report:compare_command",
    "cues": "cues:cues_group",
    "curves": "report:curves_command",
    "data": "data:data_group",
    "demo": "demo:demo_command",
    "eval": "eval:eval_command",
    "leaderboard": "report:leaderboard_command",
    "list": "listing:list_command",
    "proposals": "proposals:proposals_group",
    "reproduce": "reproduce:reproduce_group",
    "score": "eval:score_command",
    "show": "report:show_command",
    "train": "train:train_command",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that command is used.

    `lazy_commands` maps a name to ``module:attribute`` under refbench.cli; the top-level group
    uses `COMMANDS`, a nested group passes its own table (``@click.group(cls=LazyGroup,
    lazy_commands=...)``). A name whose module is not installed is left out.
    """

    lazy_commands: Mapping[str, str] = COMMANDS

    def __init__(self, *args, lazy_commands: Mapping[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if lazy_commands is not None:
            self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in self.lazy_commands if self._module_of(name) is not None)

    def _module_of(self, name: str) -> str | None:
        target = self.lazy_commands.get(name)
        if target is None:
            return None
        module_name = f"refbench.cli.{target.split(':')[0]}"
        return module_name if importlib.util.find_spec(module_name) is not None else None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = self._module_of(name)
        if module_name is None:
            return None
        module = importlib.import_module(module_name)
        return getattr(module, self.lazy_commands[name].split(":")[1])


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
