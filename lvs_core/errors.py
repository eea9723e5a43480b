"""The error type for invalid user input."""

from __future__ import annotations


class AuditInputError(ValueError):
    """Invalid user input: a model, layer, budget, prompt file or run setting.

    The message is one line that names the offending value and the fix. The CLI prints it
    without a traceback and exits with status 2; the dashboard shows it in the page.
    """
