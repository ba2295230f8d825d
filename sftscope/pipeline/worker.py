"""What runs one planned job, wherever it runs: in the driver (``local``), in a forked worker
process (``processes``), in a SLURM job or a Ray task; by hand, ``python -m sftscope.pipeline.worker
RUN/jobs/JOB.json``.

A job claims itself (``claims/<job>.json``, :mod:`.claims`), runs its stages in order,
each skipped when its marker says it is done, and releases the claim. A worker killed at any
point leaves finished stages marked and the half-done one unmarked, so running the same job
again redoes exactly that one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from sftscope.errors import SftscopeError
from sftscope.layout import RunLayout
from sftscope.pipeline.claims import Claim
from sftscope.pipeline.runners import execute, run_stage
from sftscope.pipeline.stage import Job, Stage

DEFAULT_CLAIM_TIMEOUT_S = 600.0


def run_job(
    job: Job,
    root: Path,
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
    on_stage: Callable[[Stage], None] | None = None,
) -> None:
    """Run ``job`` of the run folder ``root`` in this process."""
    with Claim(RunLayout(root).claim(job.name), claim_timeout_s):
        if job.shard is not None:
            (stage,) = job.stages
            if not stage.done():
                run_stage(stage, shard=job.shard)
            return
        if job.cell:
            _run_cell(job, on_stage)
            return
        for stage in job.stages:
            _execute(stage, on_stage)


def _run_cell(job: Job, on_stage: Callable[[Stage], None] | None) -> None:
    """train, then its analyses (eval, kl, diff, ...): the fine-tuned weights are retrained
    when deleted (``keep_models: false``) but needed again by an analysis not yet done."""
    from sftscope.params.tensors import has_weights  # (torch: only in a job that trains)

    train, *analyses = job.stages
    if train.done() and all(s.done() for s in analyses):
        return
    if not train.done() or (not all(s.done() for s in analyses) and not has_weights(train.output)):
        if train.output.exists():
            shutil.rmtree(train.output)
        _execute(train, on_stage)
    for stage in analyses:
        _execute(stage, on_stage)
    if not job.keep_models:
        for f in train.output.glob("*.safetensors"):
            f.unlink()
        shutil.rmtree(train.output / "adapter", ignore_errors=True)


def _execute(stage: Stage, on_stage: Callable[[Stage], None] | None) -> None:
    if not stage.done():
        execute(stage)
        if on_stage is not None:
            on_stage(stage)


@contextlib.contextmanager
def logged(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too: C code, tqdm, warnings)
    to ``path`` for the duration: a Ray task or SLURM job leaves its log in the run folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def job_threads() -> int | None:
    """Torch threads for a worker: ``OMP_NUM_THREADS`` (the same count gives the same float
    reductions), else in a SLURM job the CPUs it was given. Without CPU binding
    (``TaskPlugin=task/none``) torch would start a thread per core of the node: two jobs on a
    2-core node trained 8x slower than one thread each."""
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def run_job_file(path: str | Path, log: bool = False, claim_timeout_s: float | None = None) -> str:
    """Run the job saved at ``path`` (``RUN/jobs/<job>.json``); returns its name. ``log``:
    write its output to ``RUN/logs/<job>.log`` (for workers whose output goes elsewhere)."""
    import logging

    path = Path(path)
    root = path.parent.parent
    job = Job.model_validate_json(path.read_text(encoding="utf-8"))
    threads = job_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    timeout = claim_timeout_s or float(
        os.environ.get("SFTSCOPE_CLAIM_TIMEOUT_S", DEFAULT_CLAIM_TIMEOUT_S)
    )
    with logged(RunLayout(root).log(job.name)) if log else contextlib.nullcontext():
        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
        )
        try:
            run_job(job, root, timeout)
        except SftscopeError as e:
            print(f"error: {e}", file=sys.stderr)  # the log's last line names the cause
            raise
        except Exception:
            traceback.print_exc()
            raise
    return job.name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sftscope.pipeline.worker RUN/jobs/JOB.json", file=sys.stderr)
        return 2
    try:
        run_job_file(args[0])
    except SftscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
