"""The command line shared by the baseline servers."""

from __future__ import annotations

import argparse


def parse_port(description: str) -> int:
    """Parse ``--port`` (the only option) and return it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    return int(parser.parse_args().port)
