"""The one exception type Kiln raises for problems a user can fix.

A `KilnError` message is a single line that names the file (or config key) at
fault and says what to do about it; the CLI prints it without a traceback.
"""


class KilnError(RuntimeError):
    """A user-fixable problem: bad input file, wrong config, missing artifact, full disk."""
