"""Compile the C load generator at run time (gcc -O2, zlib), cached by source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
LIBS = ("-lz",)
"""zlib, for permessage-deflate (Debian: zlib1g-dev)."""


class BuildError(RuntimeError):
    """gcc is missing or the load generator did not compile."""


def cache_dir() -> Path:
    """Where compiled load generators are kept (``$XDG_CACHE_HOME/genesis_trio_bench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genesis_trio_bench"


def build_loadgen(directory: Path | None = None) -> Path:
    """Return the path of a compiled load generator, compiling it if needed."""
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        raise BuildError("gcc not found: the load generator is compiled at run time")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS + LIBS).encode()).hexdigest()[:16]
    target_dir = directory or cache_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    binary = target_dir / f"loadgen-{digest}"
    if binary.exists():
        return binary
    tmp = target_dir / f".loadgen-{digest}.{os.getpid()}"
    result = subprocess.run(
        [compiler, *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"gcc failed:\n{result.stderr}")
    tmp.replace(binary)
    return binary
