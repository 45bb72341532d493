"""Where a step that must be built runs on this machine: the step runner (runner), the
persistent worker processes (pool, worker_main) and the process groups a run owns (procs)."""
