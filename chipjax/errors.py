"""Typed errors. Every message names what was wrong and what to do about it.

The CLI turns any :class:`ChipjaxError` into one line on stderr and exit code 2.
"""
from __future__ import annotations


class ChipjaxError(Exception):
    """Base of every error chipjax raises on purpose."""


class InputError(ChipjaxError, ValueError):
    """An argument or input array/image is not acceptable."""


class ImageError(InputError):
    """An image file is missing, empty, truncated or not an image."""


class ModelError(ChipjaxError, ValueError):
    """Unknown model name or architecture."""


class LayerError(ChipjaxError, KeyError):
    """Unknown tap name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(ChipjaxError, ValueError):
    """A weight file is unreadable, corrupt or does not fit the architecture."""


class UnsafeCheckpointError(WeightsError):
    """A pickle in a checkpoint asked for something that is not a tensor or a plain container."""


class ResourceError(ChipjaxError, MemoryError):
    """A request cannot fit the memory budget."""
