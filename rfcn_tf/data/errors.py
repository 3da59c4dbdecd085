"""Errors raised by the input pipelines.

Problems found while reading annotations in Python (a missing split file, an unknown class name,
a malformed XML file) raise `DataError` right away. Problems found inside tf.data, where Python
exceptions cannot be raised (an image that cannot be read or decoded), surface as
`tf.errors.InvalidArgumentError` whose message holds `DATA_ERROR_PREFIX` and names the file;
`data_error_from` turns such an error back into a one-line `DataError` (the training loop and
the CLIs raise that instead of TensorFlow's many-line graph error).
"""

from __future__ import annotations

import re

from rfcn_tf.errors import DataError  # the package's (an RfcnError); importable from here too

__all__ = ["DATA_ERROR_PREFIX", "DataError", "data_error_from"]

# The first words of in-graph assertion messages, so callers can recognise our errors in a
# tf.errors.InvalidArgumentError's message.
DATA_ERROR_PREFIX = "DataError:"


# tf.debugging.Assert prints each message part in brackets: [DataError: what] [file] [rest].
_ASSERT_PARTS = re.compile(
    re.escape(DATA_ERROR_PREFIX) + r" ([^\]\n]*)\] \[([^\n]*?)\] \[([^\n]*)\]"
)


def data_error_from(error: BaseException) -> DataError | None:
    """The one-line DataError an in-graph data assertion stands for, or None for other errors.

    Args:
      error: any exception; typically a `tf.errors.InvalidArgumentError` raised while iterating
        a dataset whose message (after TensorFlow's "Graph execution error" preamble and
        iterator path) holds our assertion "[DataError: cannot read ...] [<file>] [of ...]".

    Returns:
      DataError("cannot read or decode image file <file> of <source> ...") or None.
    """
    message = str(getattr(error, "message", None) or error)
    if DATA_ERROR_PREFIX not in message:
        return None
    found = _ASSERT_PARTS.search(message)
    if found is None:
        line = next(line for line in message.splitlines() if DATA_ERROR_PREFIX in line)
        text = line[line.index(DATA_ERROR_PREFIX) + len(DATA_ERROR_PREFIX) :]
    else:
        text = " ".join(part.strip() for part in found.groups())
    return DataError(text.strip().replace("\\'", "'"))
