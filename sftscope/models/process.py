"""What an engine shares with the process it runs in: log lines said once per process, and
running a function in a fresh process (vLLM keeps one model per process: it does not give back
the memory of a model it loaded, so a stage that would load several runs each load in a process
of its own)."""

from __future__ import annotations

import logging
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from sftscope.errors import SftscopeError

log = logging.getLogger(__name__)
T = TypeVar("T")

_SAID: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` once per process (an engine's fallbacks would otherwise repeat per call)."""
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


_RELEASES: list[Callable[[], None]] = []  # what a fresh process shuts down before it ends
EXIT_GRACE_S = 30.0  # a child that sent its result and still runs after this is killed


def release_on_exit(fn: Callable[[], None]) -> None:
    """Have :func:`in_fresh_process`'s child call ``fn`` once its work is done (an engine's
    own processes: vLLM's engine core is a child process that a plain exit would wait on)."""
    _RELEASES.append(fn)


def in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new, spawned Python process, its result or error passed back.
    Spawned, not forked: a vLLM engine starts processes and threads of its own, which a fork of
    a process that already holds torch's thread pools would not survive. A child that delivered
    its result but does not end within ``EXIT_GRACE_S`` is killed."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, fn, args, kwargs))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # nothing came back: the child died
        child.join()
        name = getattr(fn, "__qualname__", repr(fn))
        raise SftscopeError(
            f"{name}: its process died (exit code {child.exitcode}; killed, or out of memory?)"
        ) from None
    except BaseException:  # interrupted: the child's work is not wanted any more
        child.kill()
        raise
    finally:
        receive.close()
        child.join(EXIT_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()
    if ok:
        return value
    raise value


def _portable(e: BaseException) -> Exception:
    """An error the parent can unpickle and raise: ours as they are, any other as one line."""
    if isinstance(e, SftscopeError | ValueError):
        return e
    lines = str(e).strip().splitlines()
    return SftscopeError(f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)


def _child(send: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = (True, fn(*args, **kwargs))
    except BaseException as e:  # the parent raises it; the traceback stays in this log
        traceback.print_exc()
        result = (False, _portable(e))
    finally:
        for release in _RELEASES:
            release()
    send.send(result)
    send.close()
