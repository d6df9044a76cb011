"""The command line shared by the baseline servers."""

from __future__ import annotations

import argparse


def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    return parser


def parse_port(description: str) -> int:
    """Parse ``--port`` (the only option) and return it."""
    return int(_parser(description).parse_args().port)


def parse_port_compress(description: str) -> tuple[int, bool]:
    """Parse ``--port`` and ``--compress`` (negotiate permessage-deflate)."""
    parser = _parser(description)
    parser.add_argument(
        "--compress",
        action="store_true",
        help="negotiate permessage-deflate with clients that offer it (default: off)",
    )
    args = parser.parse_args()
    return int(args.port), bool(args.compress)
