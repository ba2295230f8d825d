"""``executor: local``: every job in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from sftscope.config.executors import ExecutorConfig
from sftscope.layout import RunLayout
from sftscope.pipeline.executors import Failure
from sftscope.pipeline.stage import Job
from sftscope.pipeline.worker import run_job


class LocalExecutor:
    @staticmethod
    def default_workers(cfg: ExecutorConfig, gpus: bool) -> int:
        return 1  # one job at a time, in this process

    def __init__(self, cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False):
        self.cfg, self.layout = cfg, layout

    def close(self) -> None:
        pass

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        """Errors propagate at once, as they would from a stage command."""
        for job in jobs:
            run_job(
                job, self.layout.root, self.cfg.claim_timeout_s, partial(_stage_done, on_done, job)
            )
            on_done(job)
        return []


def _stage_done(on_done: Callable[[Job], None], job: Job, _stage) -> None:
    on_done(job)  # the manifest after every stage, as a long cell goes
