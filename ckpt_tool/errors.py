"""The error family: each situation one class, each class one exit code and a one-line message."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3


INTERRUPTED = "interrupted; nothing was written"  # what Ctrl-C ends with, exit 130


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether Ctrl-C is behind exc: Python 3.11 wraps an exception raised while a class is
    created (a dataclass field's __set_name__, mid-import) in RuntimeError."""
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        if isinstance(at, KeyboardInterrupt):
            return True
        seen.add(id(at))
        at = at.__cause__ or at.__context__
    return False


class CkptError(Exception):
    """A failure the user can act on; its message is one line naming the file or key and the fix."""

    exit_code = EXIT_ERROR
    report: Any = None  # what the command found before failing (e.g. transplant's coverage)

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(" ".join(message.split()))
        self.report = report

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputNotFound(CkptError):
    """The path given does not exist, or a folder holds no checkpoint we know."""


class UnreadableCheckpoint(CkptError):
    """The bytes are not a checkpoint format we read, or are corrupt or truncated."""


class UnsafeCheckpoint(CkptError):
    """The file holds dangerous content; we refuse to act on it (see `ckpt scan`)."""

    exit_code = EXIT_CHECK_FAILED


class WeightsNotFound(CkptError):
    """The chosen weight set (`--weights`) is not in the checkpoint, or there are no tensors."""


class OutputRefused(CkptError):
    """The output path would overwrite the input or an existing file, or is not writable."""


class WriteFailed(CkptError):
    """Writing or verifying the output failed; nothing partial was left behind."""


class SurgeryError(CkptError):
    """A key operation is ambiguous or impossible (conflicting renames, partial prefixes...)."""


class ArchNotFound(CkptError):
    """An architecture name is not a seed, torchvision or timm model, nor an importable factory."""


class ArchBuildFailed(CkptError):
    """An architecture rejected its constructor arguments or failed to build."""


class CheckFailed(CkptError):
    """A check did not pass (smoke-train, coverage, differences, unsafe content)."""

    exit_code = EXIT_CHECK_FAILED


class UsageError(CkptError):
    """Options that contradict each other or values we do not understand."""

    exit_code = EXIT_USAGE
