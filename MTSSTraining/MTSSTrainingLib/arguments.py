"""The command line of a training job: ``mtss`` arguments from camelCase keywords, and the interpreter.

:func:`build_argv` turns keyword arguments named like the command-line options, in camelCase
(``stepsPerEpoch=2``), into arguments (``--steps-per-epoch 2``) and checks them with the real ``mtss``
parser *before* anything starts: an unknown option, a bad choice or a value of the wrong type is an
:class:`~MTSSSegmenterLib.errors.InputError` naming the near match. :func:`mtss_command` puts the
interpreter in front (``PythonSlicer`` inside Slicer, the running Python elsewhere), optionally under
``torch.distributed.run``; :func:`child_environment` puts the MTSS libraries on the child's path and
turns its progress lines on. No ``slicer``, no ``qt``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from MTSSSegmenterLib.errors import InputError, MTSSError

PROGRESS_ENV = {"MTSS_PROGRESS": "lines"}
CLI_MODULE = "MTSSSegmenterLib.cli"


def kebab(name: str) -> str:
    """``stepsPerEpoch`` -> ``steps-per-epoch`` (also accepts ``steps_per_epoch``)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).replace("_", "-").lower()


def camel(option: str) -> str:
    """``--steps-per-epoch`` -> ``stepsPerEpoch`` (the keyword the Logic accepts)."""
    parts = option.lstrip("-").split("-")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def command_parser(command: str) -> argparse.ArgumentParser:
    """The ``mtss`` sub-command parser, from the same command line the child process runs."""
    from MTSSSegmenterLib.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                return action.choices[command]
            known = ", ".join(sorted(action.choices))
            raise MTSSError(
                f"This MTSS installation has no 'mtss {command}' command (it has: {known}). The training "
                "commands come from MTSSTrainingLib; install MTSS with its training part (pip install -e .) "
                "or, in 3D Slicer, install the MTSS extension with its MTSSTraining module.")
    raise MTSSError("The mtss command line has no sub-commands; the installation is incomplete.")


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option string (``--steps-per-epoch``) -> its action, for every optional argument but help."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for opt in action.option_strings:
            if opt.startswith("--"):
                found[opt] = action
    return found


def _tokens(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(v) for v in value]
    return [str(value)]


def _format_option(flag: str, action: argparse.Action, value: Any, keyword: str) -> list[str]:
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise InputError(f"Option {keyword}={value!r} is a switch: give True or False.")
        return [flag] if value else [f"--no-{flag[2:]}"]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                           argparse._CountAction)):
        if not isinstance(value, bool):
            raise InputError(f"Option {keyword}={value!r} is a switch: give True (or leave it out).")
        return [flag] if value else []
    if isinstance(action, argparse._AppendAction):  # --model A --model B
        return [t for v in _tokens(value) for t in (flag, v)]
    if action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1):
        return [flag, *_tokens(value)]
    if isinstance(value, (list, tuple, Mapping, set, frozenset)):  # one value: a comma list (--kd output,latent)
        return [flag, ",".join(_tokens(value))]
    if isinstance(value, bool):
        return [flag, str(value).lower()]
    return [flag, str(value)]


def build_argv(command: str, positionals: Sequence[Any], options: Mapping[str, Any],
               parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The arguments of ``mtss COMMAND`` for keyword options in camelCase, checked by the real parser.

    Args:
        command: the sub-command (``train-teacher``...).
        positionals: its positional arguments, in order.
        options: ``{"stepsPerEpoch": 2, "kd": ("output", "latent"), "teachers": {"GLI": path}}``; ``None``
            and ``False`` leave an option out; a switch takes ``True``; a list becomes several values or one
            comma-separated value, whichever the option takes; a dict becomes ``KEY=VALUE`` items.
            ``output`` is the command's ``-o`` option whatever its long name (``--output``, ``--out``).
        parser: the sub-command's parser (default: looked up in the ``mtss`` command line).

    Raises:
        InputError: an option the command does not have (with the near match), or a value it refuses.
    """
    parser = parser or command_parser(command)
    actions = _option_actions(parser)
    argv = [command, *(str(p) for p in positionals)]
    short = {opt: action for action in parser._actions for opt in action.option_strings if not opt.startswith("--")}
    for keyword, value in options.items():
        flag = "--" + kebab(keyword)
        action = actions.get(flag)
        if action is None and keyword == "output" and "-o" in short:  # --output, --out or -o alone
            action = short["-o"]
            flag = next((o for o in action.option_strings if o.startswith("--")), "-o")
        if action is None:
            known = sorted(camel(f) for f in actions)
            near = difflib.get_close_matches(keyword, known, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise InputError(f"'mtss {command}' has no option '{keyword}' ({flag}).{hint} "
                             f"Known: {', '.join(known)}.")
        argv += _format_option(flag, action, value, keyword)
    check_argv(parser, argv[1:], command)
    return argv


class _ParserError(Exception):
    pass


def check_argv(parser: argparse.ArgumentParser, args: Sequence[str], command: str) -> None:
    """Parse ``args`` with the command's own parser, turning its complaints into an InputError."""
    def fail(message: str) -> None:
        raise _ParserError(message)

    original = parser.error
    parser.error = fail  # type: ignore[method-assign]
    try:
        parser.parse_args(list(args))
    except _ParserError as exc:
        raise InputError(f"'mtss {command}' refuses these arguments: {exc}. Arguments: {' '.join(args)}") from None
    except SystemExit as exc:  # a type function or action that exits by itself
        raise InputError(f"'mtss {command}' refuses these arguments ({exc}): {' '.join(args)}") from None
    finally:
        parser.error = original  # type: ignore[method-assign]


def python_command() -> list[str]:
    """The interpreter for child processes: ``PythonSlicer`` inside Slicer, else the running Python."""
    import shutil

    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return [found]
    return [sys.executable]


def child_environment() -> dict[str, str]:
    """Environment additions for a child: the MTSS libraries on ``PYTHONPATH`` and progress lines on."""
    import MTSSSegmenterLib

    import MTSSTrainingLib

    roots = [str(Path(MTSSSegmenterLib.__file__).resolve().parents[1]),
             str(Path(MTSSTrainingLib.__file__).resolve().parents[1])]
    existing = os.environ.get("PYTHONPATH", "")
    path = os.pathsep.join(dict.fromkeys([*roots, *(p for p in existing.split(os.pathsep) if p)]))
    return {"PYTHONPATH": path, **PROGRESS_ENV}


def mtss_command(argv: Sequence[str], nproc: int | None = None, python: Sequence[str] | None = None) -> list[str]:
    """``python -m MTSSSegmenterLib.cli ARGV``, or the same under ``torch.distributed.run`` (torchrun).

    ``nproc`` processes on this machine (one per GPU, or several CPU processes with the ``gloo`` backend).
    """
    if nproc is not None and (not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1):
        raise InputError(f"nproc={nproc!r}: give the number of processes, a whole number >= 1.")
    python = list(python or python_command())
    if nproc is None or nproc == 1:
        return [*python, "-m", CLI_MODULE, *argv]
    return [*python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
            "-m", CLI_MODULE, *argv]


__all__ = ["build_argv", "check_argv", "command_parser", "mtss_command", "python_command", "child_environment",
           "kebab", "camel", "CLI_MODULE"]
