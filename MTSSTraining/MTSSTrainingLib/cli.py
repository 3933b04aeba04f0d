"""`mtss` sub-commands of the training library, registered through the ``mtss.commands`` entry point.

Each command lives next to the code it runs, in a module with ``add_parser(subparsers)`` that sets
``func`` on its parser; this module only lists them. Imports inside each module's command function
stay lazy so that ``mtss --help`` and ``mtss segment`` do not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES: tuple[str, ...] = (
    "MTSSTrainingLib.synth.command",
    "MTSSTrainingLib.commands",
    "MTSSTrainingLib.benchmark",
    "MTSSTrainingLib.calibration",
    "MTSSTrainingLib.component_calibration",
    "MTSSTrainingLib.ceiling",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet in this checkout
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_parser(subparsers)
