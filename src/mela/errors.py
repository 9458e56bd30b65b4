"""The one exception type users see: its message is a single actionable line."""


class MelaError(Exception):
    """A user-facing error: what is wrong and how to fix it, in one line.

    The CLI catches it and prints ``error: <message>`` without a traceback.
    """
