"""What every stage's thin ``main`` shares: the argument parser and error reporting.

A stage's ``main(argv)`` parses ``--params`` and ``--quiet`` (and its own options), loads
its section and the ``paths`` section, calls its pure core and writes outputs. Expected failures (bad params, bad input data)
end with a one-paragraph message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from pipeline.errors import StageError
from pipeline.params import DEFAULT_PARAMS, ParamsError

__all__ = ["StageError", "make_parser", "run_main"]


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"portrait-curation {prog}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file to read (default: %(default)s); a profile such as "
                             "profiles/paper.yaml works as it is")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (what dvc.yaml runs)")
    return parser


def run_main(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``body`` and turn expected errors into a clear message and exit 2."""
    args = parser.parse_args(argv)
    try:
        code = body(args)
    except (ParamsError, StageError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; outputs already written are kept", file=sys.stderr)
        return 130
    return int(code or 0)
