"""Errors raised by the input pipelines.

Problems found while reading annotations in Python (a missing split file, an unknown class name,
a malformed XML file) raise `DataError` right away. Problems found inside tf.data, where Python
exceptions cannot be raised (an image that cannot be read or decoded), surface as
`tf.errors.InvalidArgumentError` whose message starts with `DATA_ERROR_PREFIX` and names the file.
"""

from __future__ import annotations

__all__ = ["DataError", "DATA_ERROR_PREFIX"]

# The first words of in-graph assertion messages, so callers can recognise our errors in a
# tf.errors.InvalidArgumentError's message.
DATA_ERROR_PREFIX = "DataError:"


class DataError(ValueError):
    """A dataset that cannot be read as configured; the message names the file and the value."""
