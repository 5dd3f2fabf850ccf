"""Kill a `sact` command with SIGKILL at an exact moment: its k-th file-system operation under a
folder (the store it extracts into, the run it trains), counted by a Python audit hook.

    python -m tests.faults.kills --under feats.zarr --trace ops.txt -- extract --videos v ...
    python -m tests.faults.kills --under feats.zarr --at 17 -- extract --videos v ...

The first form runs the command to the end and writes one line per operation (``index kind
path``); the second kills the process just before operation 17, as a power cut or the OOM killer
would, so nothing after it happens: no cleanup, no ``finally``. Operations are what Python sees of
a write: a file opened for writing, a rename, a hard link, a remove, a folder removed (zarr's chunk
writes, extraction's claims, training's checkpoints and metrics all go through them; making a
folder is not counted, it changes nothing a reader sees). Bytes that C++ code writes to a path it
opens itself fall between two counted operations.

The moment is exact in a single-threaded run; with threads (a background writer, the claims'
heartbeat) the order of their operations may vary between runs, which is what a kill meets too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# audit event -> index of its path argument; "open" counts only when it opens for writing
WATCHED_EVENTS = {
    "open": 0,
    "os.rename": 1,  # os.rename and os.replace, by destination
    "os.link": 1,
    "os.remove": 0,
    "os.rmdir": 0,
    "shutil.rmtree": 0,
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass(frozen=True)
class Operation:
    """One counted operation of a traced run."""

    index: int  # 1-based: ``--at index`` kills just before it
    kind: str  # the audit event, e.g. "open", "os.rename"
    path: str  # relative to the watched folder

    def to_line(self) -> str:
        return f"{self.index}\t{self.kind}\t{self.path}\n"

    @classmethod
    def from_line(cls, line: str) -> Operation:
        index, kind, path = line.rstrip("\n").split("\t")
        return cls(int(index), kind, path)


def read_trace(path: Path) -> list[Operation]:
    return [Operation.from_line(line) for line in path.read_text().splitlines() if line]


def _opens_for_writing(args: tuple[Any, ...]) -> bool:
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(letter in mode for letter in "wax+")
    return isinstance(flags, int) and bool(flags & WRITE_FLAGS)


class KillSwitch:
    """The audit hook: counts operations under ``folder``, traces them, kills at ``at``."""

    def __init__(self, folder: Path, *, at: int | None, trace: Path | None) -> None:
        self.folder = os.fspath(folder.resolve())
        self.at = at
        self.count = 0
        self.in_removal = False  # inside shutil.rmtree of a watched folder (relative removes)
        # A raw descriptor: writing through it raises no audit event of its own.
        self.trace = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if trace else None

    def _watched(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        text = os.fsdecode(os.fspath(path))
        if not os.path.isabs(text):
            return text if self.in_removal else None
        absolute = os.path.normpath(text)
        if absolute == self.folder or absolute.startswith(self.folder + os.sep):
            return os.path.relpath(absolute, self.folder)
        return None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        index = WATCHED_EVENTS.get(event)
        if index is None or (event == "open" and not _opens_for_writing(args)):
            return
        relative = self._watched(args[index])
        if event == "shutil.rmtree":
            self.in_removal = relative is not None
        if relative is None:
            return
        self.count += 1
        if self.trace is not None:
            os.write(self.trace, Operation(self.count, event, relative).to_line().encode())
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.kills", description=__doc__)
    parser.add_argument("--under", type=Path, required=True, help="the folder whose ops count")
    parser.add_argument("--at", type=int, help="SIGKILL just before this operation (1-based)")
    parser.add_argument("--trace", type=Path, help="write every counted operation to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then sact's arguments")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    sys.addaudithook(KillSwitch(options.under, at=options.at, trace=options.trace))
    from sact.cli import app

    app(args=command, prog_name="sact")


if __name__ == "__main__":
    main()
