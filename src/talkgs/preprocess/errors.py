"""Errors raised by the preprocessing stages."""

from __future__ import annotations


class InputError(ValueError):
    """The input video (or a previous stage's output) cannot be used.

    The message always reads ``"<file>: <what is wrong>. <how to fix it>"`` so that a user
    running ``dvc repro`` sees which file to look at and what to do, without a traceback.
    """
