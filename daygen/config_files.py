"""The YAML files under configs/ that settings point at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, what: str) -> Any:
    """A config file's contents; a file that can't be read or parsed is a ValueError naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc}") from None
