"""What the aggregator tells whoever runs it: progress events, and fatal exits.

Events are lines ``FLOPS_EVENT {json}`` on stdout (round results, then a summary, or an error); the runner
reads them from the aggregator's output, and on Flower's deployment engine from a file the ServerApp appends
to (``Events(file=...)``). A fatal error is reported as an event and ends the process at once, whatever
threads are still running (Flower's gRPC threads would keep it alive).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

EVENT_PREFIX = "FLOPS_EVENT "


def read_event(line: str) -> dict[str, Any] | None:
    """The event a line carries, or None for any other line (Flower's own log lines, broken JSON)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


@dataclass(frozen=True)
class Events:
    """Where one aggregator's events go: stdout, and ``file`` too when given."""

    file: str | None = None

    def emit(self, event: str, **fields: Any) -> None:
        line = EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str)
        print(line, flush=True)
        if self.file:
            with open(self.file, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    def fatal(self, message: str, tracker=None) -> NoReturn:
        """Report ``message``, mark the open round failed (``tracker.fail()``), and leave now with exit 1."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.emit("error", message=message)
        if tracker is not None:
            tracker.fail()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
