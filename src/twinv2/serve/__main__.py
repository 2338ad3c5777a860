"""`python -m twinv2.serve serve|nearline ...`: the same subcommands as `twinv2 serve|nearline`, for child
processes (tests, `twinv2 bench serve`) and deployments that start the service without the full CLI."""

from __future__ import annotations

import argparse
import sys

from twinv2.schema import DataError
from twinv2.serve.commands import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twinv2.serve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"twinv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
