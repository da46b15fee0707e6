"""``.npz`` archives of plain arrays (``np.savez``); object arrays (pickles) are refused."""
from __future__ import annotations

import numpy as np

from ..errors import WeightsError

__all__ = ["read_npz"]


def read_npz(path: str) -> dict[str, np.ndarray]:
    """``{key: array}`` with the keys as stored (``np.savez(path, **{"a/b": x})`` -> ``"a/b"``)."""
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            try:
                out[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise WeightsError(
                        f"array {key!r} is an object array (a pickle), which chipjax never loads; "
                        f"save numeric arrays only"
                    ) from None
                raise
    return out
