"""The one error type a user can act on; every stage turns it into one line and exit 2.

It lives below every other module (``atomic``, ``params``, ``stage``) so that the lowest
helpers can refuse something clearly without importing the stage machinery.
"""


class StageError(RuntimeError):
    """An expected failure a user can fix (missing input, unusable data, refused checkpoint)."""
