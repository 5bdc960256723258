"""``python -m tests.fault.run --profile long``: one fault run, its summary table on stdout.

Exit status 0 when every check passed, 1 when one failed (the history's path is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

from .runner import PROFILES, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.run", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: the profile's)")
    parser.add_argument("--faults", type=int, default=None, help="override the profile's fault count")
    parser.add_argument("--max-seconds", type=float, default=None, help="no new fault after this long")
    parser.add_argument("--nemesis", action="append", help="only these nemeses (repeatable)")
    parser.add_argument("--call-timeout", type=float, default=None, help="the clients' SDK deadline (default 10 s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new directory under /tmp")
    parser.add_argument("--keep-history", action="store_true", help="write history.jsonl even when all passed")
    args = parser.parse_args(argv)
    base = PROFILES[args.profile]
    profile = dataclasses.replace(
        base,
        faults=args.faults if args.faults is not None else base.faults,
        max_seconds=args.max_seconds if args.max_seconds is not None else base.max_seconds,
        nemeses=tuple(args.nemesis) if args.nemesis else base.nemeses,
        call_timeout=args.call_timeout if args.call_timeout is not None else base.call_timeout,
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix=f"cp-fault-{profile.name}-"))
    result = asyncio.run(run(profile, work_dir, seed=args.seed, keep_history=args.keep_history))
    print(result.text())
    print(f"summary: {result.summary_path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
