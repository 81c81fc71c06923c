"""The fenced blocks of README.md and cluster/README.md, and a fresh copy of the repository to run them in.

Every ``bash``/``sh``/``yaml`` block in those files carries a mark on the line before its fence,
``<!-- doc-test: KIND -->``:

- ``local``: runs as written from the repository root after the documented set-up; run by tests/test_docs.py;
- ``setup``: the set-up itself (``make test``, ``make demo``): checked, not run;
- ``cluster``: needs a real cluster or cloud (kubectl, docker, ``ray up``, a remote head, a bucket): checked;
- ``your-data``: needs the reader's own data: checked;
- ``config``: a YAML config: validated.

A document's local blocks run in order in one bash session, in a copy of the repository (the files git tracks
or would track, as a fresh clone has them) whose ``.venv`` links to the running interpreter's environment.
``ray start`` / ``ray job`` / ``ray stop`` in a block go through a shell function that gives the cluster its
own temp dir and free ports, sends ``127.0.0.1:8265`` to its dashboard port, and leaves the stop to the test,
which stops the cluster by the PIDs of its own processes (:mod:`tests.rayprocs`), never by a bare ``ray stop``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "cluster/README.md")
KINDS = ("local", "setup", "cluster", "your-data", "config")
SHELL = ("bash", "sh", "shell")
MARK = re.compile(r"<!--\s*doc-test:\s*([\w-]+)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    kind: str | None  # the doc-test mark, None when the block has none
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str, root: Path = REPO) -> list[Block]:
    """Every fenced block of ``doc`` with its language and mark."""
    lines = (root / doc).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.search(prev)
        out.append(
            Block(doc, start + 1, lang, mark.group(1) if mark else None, "\n".join(lines[start + 1 : j]))
        )
        i = j + 1
    return out


def commands(text: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuation lines joined, comments dropped, and
    ``&&`` / ``;`` / ``&`` / ``|`` separated. Variables are left as written (``$D/target``)."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        cmd: list[str] = []
        for tok in lexer:
            if tok and set(tok) <= set("&;|"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


def assignments(text: str) -> dict[str, str]:
    """Shell variables the block sets (``D=s3://BUCKET/x``), to expand in the commands that use them."""
    env = {}
    for cmd in commands(text):
        if len(cmd) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", cmd[0]):
            name, value = cmd[0].split("=", 1)
            env[name] = value
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), m.group(0)), arg)


# ------------------------------------------------------------------------------------------ the copy


def make_clone(dest: Path) -> Path:
    """Copy the files git tracks or would track (the working tree's content) to ``dest``; link ``.venv`` to the
    environment of the running interpreter, as ``make test`` would have made it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def ray_wrapper(temp_dir: str, ports: dict[str, int]) -> str:
    """Bash function ``ray`` for the blocks: ``start`` gets its own temp dir and ports, ``job`` calls reach the
    dashboard's port, ``stop`` is left to the test (by PID)."""
    start_flags = " ".join(
        [
            f"--temp-dir {temp_dir}",
            "--node-ip-address 127.0.0.1",
            "--include-dashboard true",
            "--num-gpus 0",
            "--object-store-memory 500000000",
            "--disable-usage-stats",
            *(f"--{flag} {port}" for flag, port in ports.items()),
        ]
    )
    dash = ports["dashboard-port"]
    return f"""
ray() {{
  case "$1" in
    start) command ray "$@" {start_flags} ;;
    stop) echo "doc test: ray stop is left to the test, which stops this cluster by the PIDs of its processes" ;;
    *) local a; local args=(); for a in "$@"; do args+=("${{a//127.0.0.1:8265/127.0.0.1:{dash}}}"); done
       command ray "${{args[@]}}" ;;
  esac
}}
"""


def run_local_blocks(
    doc: str, clone: Path, ray_tmp: str, ports: dict[str, int], log: Path, timeout_s: float
) -> subprocess.CompletedProcess:
    """Run the local blocks of ``doc`` in order in one bash session in ``clone`` (``set -e``: the first failing
    command ends it); each block is announced in ``log`` with its place in the document."""
    parts = ["set -eo pipefail", ray_wrapper(ray_tmp, ports)]
    for b in blocks(doc, clone):
        if b.kind == "local" and b.lang in SHELL:
            parts += [f"echo '>>> doc block {b.where}'", b.text]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=str(clone), RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "w") as f:
        return subprocess.run(
            ["bash", "-c", "\n".join(parts)],
            cwd=clone,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )


def tail(log: Path, n: int = 15000) -> str:
    text = log.read_text(errors="replace")
    return text[-n:]


RAY_PORT_FLAGS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


@dataclass
class Outcome:
    returncode: int
    log: Path

    def explain(self) -> str:
        return f"exit {self.returncode}; log {self.log}:\n{tail(self.log)}"


class DocsClone:
    """A fresh copy of the repository with its own Ray temp dir; each document's local blocks run at most once."""

    def __init__(self, root: Path, ray_tmp: str, timeout_s: float) -> None:
        from tests.conftest import free_port

        self.root = make_clone(root)
        self.ray_tmp = ray_tmp
        self.timeout_s = timeout_s
        self.ports = {flag: free_port() for flag in RAY_PORT_FLAGS}
        self.outcomes: dict[str, Outcome] = {}

    def run(self, doc: str) -> Outcome:
        if doc not in self.outcomes:
            log = self.root.parent / f"{doc.replace('/', '_')}.log"
            try:
                rc = run_local_blocks(
                    doc, self.root, self.ray_tmp, self.ports, log, self.timeout_s
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            self.outcomes[doc] = Outcome(rc, log)
        return self.outcomes[doc]
