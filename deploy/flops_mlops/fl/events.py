"""What the aggregator tells whoever runs it: progress events, and fatal exits.

A person reads them as text (summary.py: a line per round, then a summary with links), which is what an
aggregator started on its own prints (a compose or Oakestra container). The runner of `flops-mlops round` asks
for machine-readable events instead (FLOPS_EVENTS=json): lines ``FLOPS_EVENT {json}`` on stdout (round results,
then a summary, or an error), and on Flower's deployment engine in a file the ServerApp appends to
(``Events(file=...)``). A fatal error is reported as an event and ends the process at once, whatever threads are
still running (Flower's gRPC threads would keep it alive).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from .summary import round_line, summary_lines

EVENT_PREFIX = "FLOPS_EVENT "
# FLOPS_EVENTS=json: FLOPS_EVENT lines on stdout, for the runner; anything else: text for a person.
EVENTS_VARIABLE = "FLOPS_EVENTS"


def read_event(line: str) -> dict[str, Any] | None:
    """The event a line carries, or None for any other line (Flower's own log lines, broken JSON)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class NotEnoughLearners(RuntimeError):
    """Fewer learners than a round needs are left: the training cannot go on (the aggregator registers the best
    model so far, then ends)."""


@dataclass(frozen=True)
class Events:
    """Where one aggregator's events go: stdout (as text, or as FLOPS_EVENT lines when ``machine``), and
    ``file`` too when given (always FLOPS_EVENT lines)."""

    file: str | None = None
    machine: bool = True

    @classmethod
    def for_stdout(cls) -> Events:
        """Text for a person, unless FLOPS_EVENTS=json (the runner of `flops-mlops round` sets it)."""
        return cls(machine=os.environ.get(EVENTS_VARIABLE, "").strip() == "json")

    def emit(self, event: str, **fields: Any) -> None:
        line = EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str)
        if self.machine:
            print(line, flush=True)
        elif event == "round":
            print(round_line(fields), flush=True)
        elif event == "notice":
            print(f"note: {fields['message']}", flush=True)
        elif event == "summary":
            print("\n" + "\n".join(summary_lines(fields)), flush=True)
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
