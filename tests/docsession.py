"""Run a docs page's session: its ``file``/``patch``/``console``/``server`` blocks in page order.

The page's commands run in a temporary directory standing for the reader's home (shown in the docs as
``/home/me``), through the installed ``crmkit`` script like a reader's shell would, with the output
compared to what the page shows (:func:`tests.docblocks.output_matches`).

On PostgreSQL every command gets ``CRMKIT_DATABASE_URL`` set to the test's schema, and each distinct
``postgresql://`` URL written on the page is replaced by a fresh, empty schema of the test database,
so a page that creates a second database gets one.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.docblocks import Block, console_commands, output_matches

SHOWN_HOME = "/home/me"
_CRMKIT_SCRIPT = Path(sys.executable).parent / "crmkit"


def crmkit_argv() -> list[str]:
    """How to run the ``crmkit`` command: the installed script (so the current directory is NOT on
    ``sys.path``, as for a reader), else ``python -m crmkit.cli``."""
    return [str(_CRMKIT_SCRIPT)] if _CRMKIT_SCRIPT.exists() else [sys.executable, "-m", "crmkit.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SessionError(AssertionError):
    """A block of the page did not do what the page says."""


class Session:
    """The state of one run through a page: working directory, environment, databases."""

    def __init__(self, home: Path, backend: str, db_url: str, fresh_pg: Callable[[], str] | None = None):
        self.home = home
        self.cwd = home
        self.backend = backend
        self.fresh_pg = fresh_pg
        self._pg_urls: dict[str, str] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRMKIT_")}
        if backend == "postgresql":
            self.env["CRMKIT_DATABASE_URL"] = db_url

    # -- blocks ------------------------------------------------------------------------------
    def run(self, block: Block) -> None:
        d = block.directive
        assert d is not None
        wanted = d.args.get("backend")
        if wanted and wanted != self.backend:
            return
        getattr(self, "_" + d.kind)(block)

    def _file(self, block: Block) -> None:
        path = self.cwd / block.directive.args["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text, encoding="utf-8")

    def _patch(self, block: Block) -> None:
        """A diff hunk: context (`` ``), removed (``-``) and added (``+``) lines, found exactly once."""
        path = self.cwd / block.directive.args["path"]
        old, new = [], []
        for line in block.text.splitlines():
            tag, rest = line[:1], line[1:]
            if tag in (" ", "-"):
                old.append(rest)
            if tag in (" ", "+"):
                new.append(rest)
            if tag not in (" ", "-", "+"):
                raise SessionError(f"{block.where}: a diff line must start with ' ', '-' or '+': {line!r}")
        text = path.read_text(encoding="utf-8")
        before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
        if text.count(before) != 1:
            raise SessionError(f"{block.where}: these lines are not in {path.name} exactly once:\n{before}")
        path.write_text(text.replace(before, after), encoding="utf-8")

    def _console(self, block: Block) -> None:
        commands = console_commands(block.text)
        last_exit = int(block.directive.args.get("exit", "0"))
        for i, cmd in enumerate(commands):
            want_exit = last_exit if i == len(commands) - 1 else 0
            result = self.shell(cmd.line, block)
            if result is None:
                continue
            code, output = result
            if code != want_exit:
                raise SessionError(f"{block.where}: `{cmd.line}` exited {code}, the page expects {want_exit}:\n"
                                   f"{output}")
            problem = output_matches(cmd.expected, output, backend=self.backend)
            if problem:
                raise SessionError(f"{block.where}: `{cmd.line}`: {problem}")

    def _server(self, block: Block) -> None:
        """Start the command, wait for ``probe`` to answer 200, then stop it (SIGTERM) cleanly."""
        lines = [c.line for c in console_commands(block.text)] if block.text.lstrip().startswith("$") else [
            " ".join(part.rstrip("\\").strip() for part in block.text.strip().splitlines())]
        (line,) = lines
        port = free_port()
        env, argv = self._parse(line.replace("8000", str(port)), block)
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}{block.directive.args['probe']}"
        try:
            deadline, status = time.monotonic() + 90, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(url, timeout=5) as answer:
                        status = answer.status
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.3)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                output = proc.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output = proc.communicate()[0]
        if status != 200:
            raise SessionError(f"{block.where}: {url} never answered 200 (got {status}):\n{output}")
        if "Traceback" in output:
            raise SessionError(f"{block.where}: the server logged an exception:\n{output}")

    # -- commands ----------------------------------------------------------------------------
    def shell(self, line: str, block: Block) -> tuple[int, str] | None:
        """Run one ``$`` line: ``cd``, ``export``, ``echo … | cmd``, ``VAR=value cmd``, crmkit, python."""
        stdin = None
        if " | " in line:
            left, line = line.split(" | ", 1)
            words = shlex.split(left)
            if words[0] != "echo":
                raise SessionError(f"{block.where}: only `echo … | command` pipes are supported: {left!r}")
            stdin = " ".join(words[1:]) + "\n"
        words = shlex.split(line)
        if words[0] == "cd":
            self.cwd = (self.cwd / words[1]).resolve()
            return None
        if words[0] == "export":
            for word in words[1:]:
                key, _, value = word.partition("=")
                self.env[key] = self._value(value, block)
            return None
        env, argv = self._parse(line, block)
        proc = subprocess.run(argv, cwd=self.cwd, env=env, input=stdin, capture_output=True, text=True, timeout=600)
        output = (proc.stdout + proc.stderr).replace(str(self.home), SHOWN_HOME)
        return proc.returncode, output

    def _parse(self, line: str, block: Block) -> tuple[dict[str, str], list[str]]:
        words = shlex.split(line)
        env = dict(self.env)
        while words and "=" in words[0] and not words[0].startswith("-"):
            key, _, value = words.pop(0).partition("=")
            env[key] = self._value(value, block)
        words = [self._value(w, block) for w in words]
        if words[0] == "crmkit":
            return env, crmkit_argv() + words[1:]
        if words[0] in ("python", "python3"):
            return env, [sys.executable, *words[1:]]
        if words[0] == "uvicorn":
            return env, [sys.executable, "-m", "uvicorn", *words[1:]]
        raise SessionError(f"{block.where}: the docs test cannot run `{words[0]}`; mark the block skip (reason)")

    def _value(self, value: str, block: Block) -> str:
        """A PostgreSQL URL on the page stands for a fresh schema of the test database."""
        if "postgresql://" not in value:
            return value
        if self.backend != "postgresql" or self.fresh_pg is None:
            raise SessionError(f"{block.where}: a PostgreSQL URL in a block not marked backend=postgresql")
        if value not in self._pg_urls:
            self._pg_urls[value] = self.fresh_pg()
        return self._pg_urls[value]
