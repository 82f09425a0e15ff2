"""A child process that appends to a journal file, for the several-appenders tests.

``python -m tests.journal_appender PATH COUNT TAG locked|plain`` opens the journal (with
the writers' lock file or without), prints ``ready``, waits for a line on stdin, then
appends ``COUNT`` events concurrently (every third one under a replay key shared by every
appender) and prints one JSON line per append:
``{"seq": ..., "event_id": ..., "duplicate": ..., "key": ...}``, then one line with what
its commits told ``on_commit``: ``{"commits": [[last_seq, events], ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from palyra_py.journal.journal import Journal, NewEvent, ReplayKey
from palyra_py.journal.sqlite_journal import SqliteJournal


async def main(path: Path, count: int, tag: str) -> None:
    commits: list[tuple[int, int]] = []
    journal = Journal(SqliteJournal(path, start_check_s=0, batch_max=16,
                      several_appenders=sys.argv[4] == "locked",
                      on_commit=lambda seq, events: commits.append((seq, events))))
    await journal.start()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def one(index: int) -> dict[str, object]:
        key = f"shared-{index}" if index % 3 == 0 else None
        replay = None if key is None else ReplayKey("demo", key, 3600)
        result = await journal.append(NewEvent(
            kind="webhook.received", source="demo", integration_id="demo",
            payload={"appender": tag, "index": index}, replay_key=replay))
        return {"seq": result.seq, "event_id": result.event_id,
                "duplicate": result.duplicate, "key": key}

    results = await asyncio.gather(*(one(i) for i in range(count)))
    await journal.close()
    for result in results:
        print(json.dumps(result), flush=True)
    print(json.dumps({"commits": commits}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
