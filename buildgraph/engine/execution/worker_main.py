"""Entry point of a persistent worker process: ``python -m buildgraph.engine.execution.worker_main``.

Reads ``("run", kind, task)`` requests and answers ``("ok", metadata)``,
``("failed", message)`` for a clean step failure, or ``("error", message)`` for an unexpected
exception (whose traceback goes to the step's log). ``("call", "module:function", payload,
log_path)`` calls a function the same way (``buildgraph repro`` compares outputs with the
runtimes this way, out of its own process) and answers ``("ok", its result)``.
"""

from __future__ import annotations

import os
import sys
import traceback


def main() -> None:
    from buildgraph.engine.execution import procs

    # Keep the protocol on private descriptors; fd 0/1/2 belong to the running step.
    proto_in = os.dup(0)
    # Then, before anything slow: never outlive the run, nor let what a step started here
    # outlive us (the run's end of proto_in hangs up when it dies).
    procs.die_with_parent(pipe=proto_in)
    procs.end_on_sigterm()

    from buildgraph.engine.execution.pool import recv, send

    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    while True:
        request = recv(proto_in)
        if request is None or request[0] not in ("run", "call"):
            # An idle worker holds nothing to finalize; tearing down torch & co. takes up to a
            # second per worker, which every run would wait for at its end.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if request[0] == "call":
            _, target, payload, log_path = request
            send(proto_out, _call_one(target, payload, log_path, devnull))
            continue
        _, kind, task = request
        send(proto_out, _run_one(kind, task, devnull))


def _call_one(target: str, payload: object, log_path: str, devnull: int) -> tuple:
    def call() -> object:
        from buildgraph.registry import import_object

        return import_object(target, what=f"function '{target}'")(payload)

    return _logged(log_path, os.getcwd(), devnull, call)


def _run_one(kind: str, task: object, devnull: int) -> tuple:
    def run() -> object:
        from buildgraph.engine import executor as executors
        from buildgraph.engine import origin

        origin.mark(getattr(task, "untrusted", ()))
        return executors.load_executor(kind)().run(task)  # type: ignore[arg-type]

    return _logged(task.log_path, task.work_dir, devnull, run)  # type: ignore[attr-defined]


def _logged(log_path: str, work_dir: str, devnull: int, work: object) -> tuple:
    """``work()`` with fd 1 and 2 on the log and ``work_dir`` as the working directory; its
    result or failure as a reply."""
    from buildgraph.errors import BuildgraphError, RecipeError

    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_err = os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    cwd = os.getcwd()
    try:
        os.chdir(work_dir)
        return ("ok", work())  # type: ignore[operator]
    except RecipeError as exc:  # the scheduler adds the step's location
        return ("recipe", (exc.message, exc.hint))
    except BuildgraphError as exc:
        return ("failed", exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
    except KeyboardInterrupt:
        return ("failed", "cancelled")
    except BaseException as exc:  # noqa: BLE001 - report any failure of user code as a step failure
        traceback.print_exc()
        return ("error", f"{type(exc).__name__}: {exc}".strip())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(cwd)
        os.dup2(devnull, 1)
        os.dup2(saved_err, 2)
        os.close(saved_err)
        os.close(log_fd)


if __name__ == "__main__":
    main()
