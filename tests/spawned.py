"""Functions run by sftscope.models.process.in_fresh_process in the tests: a module of their
own, so the spawned child imports only this."""

from __future__ import annotations

import os

from sftscope.errors import SftscopeError


def pid_and_double(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def fails() -> None:
    raise SftscopeError("bad input in the child")


def dies() -> None:
    os._exit(9)
