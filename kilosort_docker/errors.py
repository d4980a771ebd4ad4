"""Errors that reach a user as one line naming the fix."""


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the fix.

    Front ends (invoke tasks, nox sessions) print the message and exit non-zero
    instead of showing a traceback.
    """

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("UserError messages are one line")
        super().__init__(message)
