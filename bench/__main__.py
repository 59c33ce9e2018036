"""`python -m bench [part ...]`: every benchmark, or the parts named (backup, snapshot, restore, legacy, media,
clients, report, health; `scale`, which takes tens of minutes, runs only when named)."""

from __future__ import annotations

import importlib
import sys

PARTS = ("backup", "snapshot", "restore", "legacy", "media", "clients", "report", "health")
NAMED_ONLY = ("scale",)


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("-")]
    chosen = [a for a in argv if not a.startswith("-")] or list(PARTS)
    unknown = [p for p in chosen if p not in PARTS + NAMED_ONLY]
    if unknown:
        print(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS + NAMED_ONLY)}",
              file=sys.stderr)
        return 2
    status = 0
    for part in chosen:
        try:
            module = importlib.import_module(f"bench.{part}")
        except ModuleNotFoundError as exc:
            print(f"bench: part {part} is not available ({exc})", file=sys.stderr)
            status = 1
            continue
        status |= module.main(flags)
    return status


raise SystemExit(main(sys.argv[1:]))
