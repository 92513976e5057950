"""The ``xrais`` command: global options here, one ``register(app)`` per stage.

Heavy imports (numba, torch, h5py) happen inside command bodies so ``xrais --help`` is fast.
A command turns its options into the stage's config, calls one library function and reports
with rich. An :class:`~xrais.errors.XraisError` becomes one line on stderr and its exit status
(``--debug`` shows the traceback); any other exception is one line too, naming its type.
Exit statuses are those of :mod:`xrais.runs` (0 all inputs done, 1 some failed, 2 usage error,
128 + N stopped by signal N).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from xrais._version import __version__
from xrais.errors import XraisError
from xrais.runs import EXIT_FAILED, EXIT_STATUS_HELP

__all__ = ["app", "main", "console", "err_console", "state", "XraisGroup"]


def _tidy_help(command: object) -> None:
    """Make a command's help read as written: literal brackets, no value placeholder for flags.

    Help texts are plain text: ``[default: …]`` written in a help string is shown as is, not
    taken for Rich markup. Flags and counters (``--debug``, ``-v``) take no value, so they show
    no ``<bool>``/``<int>`` placeholder; a repeatable option shows the type of one value.
    """
    if getattr(command, "_xrais_tidy", False):
        return
    command._xrais_tidy = True  # type: ignore[attr-defined]
    if getattr(command, "help", None):
        command.help = escape(command.help)  # type: ignore[attr-defined]
    params = list(getattr(command, "params", ()))
    try:  # the --help option is made (once) on first use; make it now so that it is tidied too
        params.append(command.get_help_option(command.context_class(command)))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a command without one
        pass
    for param in params:
        if param is None or getattr(param, "param_type_name", "") != "option":
            continue
        if getattr(param, "help", None):
            param.help = escape(param.help)
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
            continue
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is not None and getattr(descriptor, "is_list", False) and not getattr(descriptor, "is_choice",
                                                                                            False):
            args = getattr(descriptor.annotation, "__args__", ())
            if len(args) == 1:
                name = args[0].__name__ if isinstance(args[0], type) else str(args[0])
                param.metavar = f"<{name.lower()}>"
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)


class XraisGroup(TyperGroup):
    """The ``xrais`` command group: every command's help shown as written (see :func:`_tidy_help`)."""

    def __init__(self, **attrs: object) -> None:
        super().__init__(**attrs)  # type: ignore[arg-type]
        _tidy_help(self)


app = typer.Typer(
    name="xrais",
    cls=XraisGroup,
    help="X-ray AI from simulation: simulate, condition, train and infer on diffraction images.\n\n"
         + EXIT_STATUS_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Tables are wide: when output goes to a file or pipe, do not fold them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"xrais {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v, -vv)."),
) -> None:
    state["debug"] = debug
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_stages() -> None:
    from xrais.conditioning.cli import register as register_conditioning
    from xrais.simulate.cli import register as register_nanobragg
    from xrais.simulate.cli_dataset import register as register_simulate
    from xrais.models.cli import register as register_models
    from xrais.train.cli import register as register_train
    from xrais.infer.cli import register as register_infer
    from xrais.infer.cli_merge import register as register_merge

    register_simulate(app)
    register_conditioning(app)
    register_nanobragg(app)
    register_models(app)
    register_train(app)
    from xrais.models.variational.cli import register as register_integrate
    register_integrate(app)
    register_infer(app)
    register_merge(app)


_register_stages()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except XraisError as exc:
        if state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: still one line (--debug: the traceback)
        if state["debug"]:
            raise
        text = " ".join(str(exc).split()) or "(no message)"
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {text} (run with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
