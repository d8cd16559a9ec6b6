"""The ``viva-relay`` CLI run inside the test process, as a subprocess would see it but without its start-up.

A ``python -m viva_relay`` subprocess spends about a second of CPU importing the Azure SDKs before it does
anything; the test process has them imported already. :func:`run_cli` calls the same ``main(argv)`` with
what a fresh process would have: exactly the given environment, working directory and stdin, its own
stdout/stderr (text and ``sys.stdout.buffer``), the root logger without handlers, the production
credential factory, and the terminal size of a pipe. Everything the CLI changes process-wide (the
environment, cwd, logging, the credential factory, the standard streams) is put back afterwards, so one
call never leaks into the next or into the test.

What stays a real subprocess (tests/test_cli_drop.py and the others say which): the installed entry point
and ``python -m viva_relay``, a terminal on stdin, signals and process exit.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

from shared import runtime
from viva_relay.cli.main import main

#: The loggers whose levels the CLI sets (viva_relay.cli.main.configure_logging), besides the root's.
_CLI_LOGGERS = ("azure", "viva_relay")


class _Output(io.TextIOWrapper):
    """A captured stdout/stderr: text over bytes, like a pipe (``.buffer`` works, never a terminal)."""

    def __init__(self, errors: str) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors=errors, newline="\n", write_through=True)

    def captured(self) -> bytes:
        """Every byte written so far, through the text layer or straight to ``.buffer``."""
        self.flush()
        raw = self.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue()


def _pipe_text(data: bytes) -> str:
    """What ``subprocess.run(text=True)`` reads from a pipe: decoded, with universal newlines."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is exactly ``env`` inside (as for a subprocess given ``env=``), the test's again after."""
    saved = dict(os.environ)
    _set_environment(env)
    try:
        yield
    finally:
        _set_environment(saved)


def _set_environment(env: Mapping[str, str]) -> None:
    # Only what differs changes: the test process's own threads (stand-ins, Azurite's log) read it meanwhile.
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def _working_directory(cwd: str | Path | None) -> Iterator[None]:
    saved = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def _fresh_logging() -> Iterator[None]:
    """No root handlers (so the CLI's ``logging.basicConfig`` takes effect), then the test's logging back."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in _CLI_LOGGERS}
    root.handlers.clear()
    root.setLevel(logging.WARNING)  # a fresh interpreter's root level
    for name in _CLI_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _fresh_credential_factory() -> Iterator[None]:
    """The production factory, as in a new process: only the CLI's own development hook may replace it."""
    saved = runtime._credential_factory
    runtime.use_credential_factory(None)
    try:
        yield
    finally:
        runtime.use_credential_factory(saved)


@contextlib.contextmanager
def _standard_streams(stdin: bytes, stdout: _Output, stderr: _Output) -> Iterator[None]:
    """The CLI's streams; ``sys.__stdout__`` too, so the terminal size is a pipe's (120 columns), not pytest's."""
    saved = sys.stdin, sys.stdout, sys.stderr, sys.__stdout__
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout, sys.stderr = stdout, stderr
    setattr(sys, "__stdout__", stdout)  # noqa: B010 - typeshed marks it Final; shutil.get_terminal_size reads it
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr, _ = saved
        setattr(sys, "__stdout__", saved[3])  # noqa: B010


def _exit_code(exit_: SystemExit) -> int:
    """The interpreter's rule for ``SystemExit``: None is 0, an int is itself, anything else is printed and 1."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=sys.stderr)
    return 1


def _run(
    args: tuple[str, ...], env: Mapping[str, str] | None, input: bytes | str | None, cwd: str | Path | None
) -> tuple[int, bytes, bytes]:
    stdout, stderr = _Output("strict"), _Output("backslashreplace")
    stdin = input.encode("utf-8") if isinstance(input, str) else (input or b"")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment(os.environ.copy() if env is None else env))
        stack.enter_context(_working_directory(cwd))
        stack.enter_context(_fresh_credential_factory())
        stack.enter_context(_standard_streams(stdin, stdout, stderr))
        stack.enter_context(_fresh_logging())  # after the streams: basicConfig binds the CLI's stderr
        try:
            code = int(main(list(args)))
        except SystemExit as exit_:
            code = _exit_code(exit_)
        except Exception:  # what the interpreter does with an uncaught error (-v re-raises it)
            traceback.print_exc(file=sys.stderr)
            code = 1
    return code, stdout.captured(), stderr.captured()


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, input: str | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``viva-relay *args`` in this process; what ``subprocess.run(..., text=True)`` would return.

    ``env`` is the whole environment of the call (default: the test process's), as ``env=`` of a subprocess.
    """
    code, out, err = _run(args, env, input, cwd)
    return subprocess.CompletedProcess(["viva-relay", *args], code, _pipe_text(out), _pipe_text(err))


def run_cli_bytes(
    *args: str, env: Mapping[str, str] | None = None, input: bytes | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """As :func:`run_cli`, with stdout and stderr as bytes (``drop decrypt`` writes rows as bytes)."""
    code, out, err = _run(args, env, input, cwd)
    return subprocess.CompletedProcess(["viva-relay", *args], code, out, err)
