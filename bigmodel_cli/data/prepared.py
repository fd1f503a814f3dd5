"""What a source becomes while it is prepared, shared by the table and image preparers (`prepare_table`,
`prepare_images`) and the writer (`prepare`), and how class values are named."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_TARGETS = ("target", "label", "class", "y")


def number_label(value: float) -> str:
    """A numeric class value as its class name: integral numbers without '.0' (eval --data reads labels so too)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Prepared:
    """What a source became: its classes and fitted preprocessing, and each split's rows, produced a chunk at a time."""

    kind: str
    features: list[str]
    classes: list[str] | None
    target: str
    preprocessing: dict[str, Any]
    row_shape: tuple[int, ...]
    dtype: Any
    y_dtype: Any
    sizes: dict[str, int]
    x_chunks: Callable[[str], Iterator[np.ndarray]]
    y_chunks: Callable[[str], Iterator[np.ndarray]]
    observe: Callable[[str, np.ndarray], None] | None = None  # sees every x chunk as written
    normalize: Callable[[], dict[str, Any]] | None = None  # the normalisation, when observe fitted it
    finish: Callable[[dict[str, Any]], None] | None = None  # adds to the report once everything is written
