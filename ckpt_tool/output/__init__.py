"""The one write path: WritePlan -> write() -> WriteReport."""

from .report import Report, WriteReport
from .write import WriteOptions, WritePlan, write

__all__ = ["Report", "WriteOptions", "WritePlan", "WriteReport", "write"]
