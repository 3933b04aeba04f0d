"""Ending a process and every process below it, also those in sessions of their own.

``torchrun`` starts each worker in a new session (``start_new_session=True``), so killing the process
group of the process we started does not reach them. On POSIX the tree is frozen first (``SIGSTOP``, so
that nobody forks meanwhile), listed from ``/proc`` (Linux) or ``ps`` (macOS), then killed; on Windows
``taskkill /T /F`` ends the tree.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def _parents_from_proc() -> dict[int, int] | None:
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    return parents


def _parents_from_ps() -> dict[int, int]:
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                             check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    parents: dict[int, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            parents[int(parts[0])] = int(parts[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), parents before children."""
    parents = _parents_from_proc()
    if parents is None:
        parents = _parents_from_ps()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in found and child != pid:
                found.append(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(process: subprocess.Popen, timeout: float = 10.0) -> None:  # type: ignore[type-arg]
    """End ``process`` and all its descendants at once, then reap ``process``."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        root = process.pid
        _signal(root, signal.SIGSTOP)
        tree = descendants(root)
        for pid in tree:  # freeze, then list again: nothing forks between the listing and the kill
            _signal(pid, signal.SIGSTOP)
        tree = list(dict.fromkeys(tree + descendants(root)))
        try:
            os.killpg(root, signal.SIGKILL)  # our child leads its own session: its group is its pid
        except (ProcessLookupError, PermissionError, OSError):
            _signal(root, signal.SIGKILL)
        for pid in tree:
            _signal(pid, signal.SIGKILL)
            _signal(pid, signal.SIGCONT)  # a stopped process dies of SIGKILL anyway; harmless otherwise
        log.info("Ended process %d and %d processes below it", root, len(tree))
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not time out
        log.warning("Process %d did not end within %.0f s of SIGKILL", process.pid, timeout)


def process_exists(pid: int) -> bool:
    """Whether a process with this id still runs (a zombie counts as ended)."""
    if os.name == "nt":
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True).stdout
        return str(pid) in out
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.joinpath("self", "stat").exists():
        try:
            state = stat.read_text()
        except OSError:
            return False
        return state[state.rfind(")") + 2:].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_session_kwargs() -> dict[str, object]:
    """``Popen`` arguments that start a child in a session (process group) of its own, so it can be ended as a tree."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


__all__ = ["kill_tree", "descendants", "process_exists", "new_session_kwargs"]
