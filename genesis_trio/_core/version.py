"""The package's version (one place; ``pyproject.toml`` says the same, a test checks)."""

VERSION = "0.3.0"
