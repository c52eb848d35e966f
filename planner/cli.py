"""`planner`: the command-line entry point.

Each subcommand lives in planner/commands/<name>.py with two functions:
`add_parser(subparsers)` registers it (help text with examples) and
`run(args) -> int` does the work. User errors (planner.errors.UserError)
print one line and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from planner.errors import UserError

# Order here is the order in `planner --help`.
COMMANDS = [
    "validate",
    "graph",
    "schema",
    "estimate",
    "profile",
    "show",
    "search",
    "evaluate",
    "calibrate",
]


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (argparse's own usage dump is noise)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="planner",
        description="FlowPlan planner: validate RLHF specs, estimate, search and show plans.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"planner.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A console-script run started with the process (time budgets count its start-up);
    # an in-process call (tests, the API) starts now.
    args.whole_process = argv is None
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        sys.stderr.write(f"{err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
