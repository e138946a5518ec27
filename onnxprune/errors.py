"""Error types and exit codes: user mistakes get a one-line message, never a traceback."""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2


def one_line(text: str, limit: int = 300) -> str:
    """A message on one line (ORT spreads the useful part over several), at most ``limit``
    characters; empty when there is no text."""
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return (text[:limit - 3] + "...") if len(text) > limit else text


class OnnxPruneError(Exception):
    """Base class for errors the CLI reports as one line."""

    exit_code = EXIT_INTERNAL


class UserError(OnnxPruneError):
    """Bad input from the user: a missing file, an invalid model, an out-of-range option."""

    exit_code = EXIT_USER


class VerificationError(OnnxPruneError):
    """The rewritten model failed a check; nothing is written."""

    exit_code = EXIT_INTERNAL
