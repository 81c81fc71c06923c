"""Find and stop the processes of one Ray instance by its temp dir, leaving every other Ray instance alone.

Ray's daemons (gcs_server, raylet, dashboard, agents, log monitor) name the session's temp dir on their
command lines; workers and job drivers are their descendants. So "the cluster" is: processes whose command
line contains the temp dir, plus all their descendants. Used instead of a bare ``ray stop``, which would
kill every Ray instance of the user on the machine.
"""

from __future__ import annotations

import os
import signal
import time


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmd)
    return table


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cluster_pids(temp_dir: str) -> set[int]:
    """Live processes of the Ray instance rooted at ``temp_dir``, and their descendants (never this process)."""
    table = _proc_table()
    me = os.getpid()
    pids = {pid for pid, (_, cmd) in table.items() if temp_dir in cmd and pid != me}
    while True:
        children = {pid for pid, (ppid, _) in table.items() if ppid in pids and pid != me} - pids
        if not children:
            break
        pids |= children
    return {p for p in pids if _alive(p)}


def stop_cluster(temp_dir: str, grace_s: float = 15.0) -> set[int]:
    """SIGTERM the instance's processes, SIGKILL what is left after ``grace_s``; returns survivors (none)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and cluster_pids(temp_dir):
            time.sleep(0.3)
        if not cluster_pids(temp_dir):
            return set()
    return cluster_pids(temp_dir)
