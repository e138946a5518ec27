"""The ``onnxprune`` command: its subcommands, and how every failure ends.

Every failure is one line on stderr and a non-zero exit (2: bad input, 1: internal error);
the output file is written only after the pruned model has passed verification.
"""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_INTERNAL, OnnxPruneError, one_line
from ..heap import keep_freed_memory
from .bench import bench, compare
from .console import error
from .inspect import inspect, sensitivity
from .latency import latency_bundle
from .prune import demo, prune
from .recover import recover
from .sweep import sweep

REPORT_BUG = "please report it with the model and command at the onnxprune issue tracker"


@click.group()
@click.version_option(package_name="onnxprune")
def cli():
    """Structural pruning of ONNX models: find coupled channels, remove them, prove it."""


for command in (inspect, prune, recover, sensitivity, demo, bench, compare, sweep,
                latency_bundle):
    cli.add_command(command)


def main(argv=None) -> int:
    keep_freed_memory()     # a third of a sweep's time went to page faults without it
    try:
        cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except click.exceptions.Abort:
        error("aborted")
        return EXIT_INTERNAL
    except click.ClickException as exc:
        error(f"error: {one_line(exc.format_message(), 1000)}")
        return exc.exit_code
    except OnnxPruneError as exc:
        error(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - never a traceback, but say it is our bug
        error(f"internal error: {type(exc).__name__}: {one_line(str(exc))}; {REPORT_BUG}")
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
