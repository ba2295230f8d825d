"""Plans and runs stages: typed stage specs (:mod:`.stage`), the runners registry
(:mod:`.runners`), the stage builders and waves (:mod:`.plan`), the composite plans (the grid,
:mod:`.grid`; the audit, :mod:`.audit`), the worker that runs a job (:mod:`.worker`) and the
executors (:mod:`.executors`). It knows the stages only through the runners registry."""
