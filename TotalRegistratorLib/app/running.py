"""How the ``totalregistrator`` and ``train.py`` commands end: exit codes and their one line on stderr.

* 0: done.
* 2: bad input (:class:`~TotalRegistratorLib.errors.InputError`) or not enough memory:
  ``<prog>: error: <file>: <problem>``.
* 130 (Ctrl-C) and 143 (SIGTERM): ``<prog>: interrupted ...``; staging folders and
  temporary files of the run are removed on the way out, completed outputs stay.

Questionable inputs print ``<prog>: warning: ...`` lines; other libraries' warnings go to
:mod:`logging` (:func:`~TotalRegistratorLib.io.messages.route_messages`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from ..errors import InputError, Terminated
from ..io.messages import held_warnings, route_messages
from ..io.outputs import stop_on_sigterm

EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 128 + signal.SIGINT, 128 + signal.SIGTERM


def run_guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and turn its ways of failing into an exit code and one stderr line."""
    route_messages(f"{prog}: warning: ")
    try:
        with held_warnings():  # a refusal is one line: warnings show once the inputs are accepted
            if threading.current_thread() is not threading.main_thread():
                return body()
            with stop_on_sigterm():
                return body()
    except InputError as err:
        return _say(f"{prog}: error: {err}", EXIT_INPUT)
    except MemoryError:
        return _say(f"{prog}: error: not enough memory for these inputs and settings", EXIT_INPUT)
    except KeyboardInterrupt:
        return _say(f"{prog}: interrupted (Ctrl-C); unfinished outputs removed", EXIT_INTERRUPTED)
    except Terminated:
        return _say(f"{prog}: stopped (SIGTERM); unfinished outputs removed", EXIT_TERMINATED)


def _say(line: str, code: int) -> int:
    print(line, file=sys.stderr, flush=True)
    return code


def exit_now(code: int) -> NoReturn:
    """End a finished command's process with ``code``: Python's streams and logging are flushed, every output is
    closed (written by context managers), so the interpreter's teardown of torch and ITK is skipped (0.6 s
    after a clinical-size registration). Only for a process's entry point, never where a caller goes on."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
