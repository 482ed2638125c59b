"""The ``refbench`` command line: a click group whose subcommands load on first use.

Each subcommand lives in its own module here; `COMMANDS` maps its name to ``module:object``.
A `RefbenchError`, a usage mistake and a full disk become a one-line message on stderr and
exit code 2.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys
from collections.abc import Mapping

import click

from refbench.errors import RefbenchError, did_you_mean

# Errors of a full disk or an exhausted quota: one line, not a traceback.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

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

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, with "Did you mean" naming the closest subcommands of a misspelt one."""
        name = click.utils.make_str(args[0])
        if self.get_command(ctx, name) is None and not name.startswith("-"):
            hint = did_you_mean(name, self.list_commands(ctx), n=2, cutoff=0.6)
            raise click.UsageError(
                f"no such command {name!r}.{hint} Commands: {', '.join(self.list_commands(ctx))}",
                ctx,
            )
        return super().resolve_command(ctx, args)

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


def _usage_line(error: click.UsageError) -> str:
    """A click usage error as one line naming the command whose --help tells more."""
    where = error.ctx.command_path if error.ctx is not None else "refbench"
    return f"error: {error.format_message()} (see `{where} --help`)"


def _disk_full_line(error: OSError) -> str:
    """An out-of-space OSError as one line: what ran out, and that a rerun resumes."""
    what = f"writing {error.filename}" if error.filename else "writing"
    reason = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    return (f"error: {reason} while {what}; free space and rerun the same command: it "
            "resumes")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors (and a full disk) exit 2 with one line, interrupts exit 130."""
    try:
        result = cli.main(args=argv, prog_name="refbench", standalone_mode=False)
    except RefbenchError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as error:
        click.echo(_usage_line(error), err=True)
        return error.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        click.echo(_disk_full_line(error), err=True)
        return 2
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
