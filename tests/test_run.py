"""End-to-end engine behaviour through the CLI: caching, plans that explain, targets, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import buildgraph
from buildgraph.cli import run_cli

HELLO = """
name: hello
vars: {greeting: hello}
steps:
  write:
    uses: shell
    with: {cmd: 'echo "${vars.greeting}, world" > ${out.txt}'}
    outputs: [txt]
  upper:
    uses: shell
    from: write
    with: {cmd: 'tr a-z A-Z < ${in.write.txt} > ${out.txt}'}
    outputs: {txt: upper.txt}
  count:
    uses: shell
    inputs: {data: data.txt}
    with: {cmd: 'wc -l < ${in.data} > ${out.n}'}
    outputs: [n]
"""


def setup_hello(project):
    project.write("r.yaml", HELLO)
    project.write("data.txt", "a\nb\nc\n")


def test_first_run_builds_second_is_all_cached(project):
    setup_hello(project)
    first = project.statuses(project.run())
    assert first == {"write": "built", "upper": "built", "count": "built"}
    assert (project.build / "hello" / "upper" / "upper.txt").read_text() == "HELLO, WORLD\n"
    assert (project.build / "hello" / "count" / "n").read_text().strip() == "3"
    second = project.statuses(project.run())
    assert set(second.values()) == {"cached"}


def test_plan_explains_a_param_change_as_a_diff(project):
    setup_hello(project)
    project.run()
    out = project.cli("plan", "r.yaml", "--set", "greeting=hey", check=0).stdout
    assert "param cmd echo \"hello, world\" > ${out.txt}→echo \"hey, world\" > ${out.txt}" in out
    assert "run?    upper" in out  # waits on write; may be cached after it runs
    assert "count" not in out.split("hello:")[0]  # unaffected step is cached, not listed


def test_plan_names_a_changed_input_file(project):
    setup_hello(project)
    project.run()
    project.write("data.txt", "a\nb\n")
    plan = json.loads(project.cli("plan", "r.yaml", "--json", check=0).stdout)
    steps = {s["step"]: s for s in plan["steps"]}
    assert steps["count"]["action"] == "run"
    assert steps["count"]["reasons"] == ["input data.txt changed"]
    assert steps["write"]["action"] == "cached"


def test_early_cutoff_identical_upstream_output_keeps_downstream_cached(project):
    project.write("r.yaml", """
        vars: {n: 1}
        steps:
          a: {uses: shell, with: {cmd: 'echo ${vars.n} > /dev/null; echo same > ${out.o}'},
              outputs: [o]}
          b: {uses: shell, from: a, with: {cmd: 'cat ${in.a.o} > ${out.o}'}, outputs: [o]}
    """)
    project.run()
    statuses = project.statuses(project.run("r.yaml", "--set", "n=2"))
    assert statuses == {"a": "built", "b": "cached"}


def test_reverting_a_change_is_a_cache_hit(project):
    setup_hello(project)
    project.run()
    project.run("r.yaml", "--set", "greeting=hey")
    statuses = project.statuses(project.run())
    # the build directory holds the "hey" outputs, so the old ones come back from the cache
    assert statuses["write"] == "restored" and statuses["upper"] == "restored"


def test_deleted_build_output_is_restored_from_cache_without_running(project):
    setup_hello(project)
    project.run()
    out = project.build / "hello" / "upper" / "upper.txt"
    out.unlink()
    statuses = project.statuses(project.run())
    assert statuses["upper"] == "restored"
    assert out.read_text() == "HELLO, WORLD\n"


def test_modified_build_output_is_restored(project):
    setup_hello(project)
    project.run("r.yaml", "--link", "copy")
    out = project.build / "hello" / "write" / "txt"
    out.write_text("tampered\n")
    statuses = project.statuses(project.run("r.yaml", "--link", "copy"))
    assert statuses["write"] == "restored"
    assert out.read_text() == "hello, world\n"


def test_target_selection_builds_only_what_is_needed(project):
    setup_hello(project)
    statuses = project.statuses(project.run("r.yaml", "upper"))
    assert statuses == {"write": "built", "upper": "built"}


def test_force_reruns_one_step(project):
    setup_hello(project)
    project.run()
    statuses = project.statuses(project.run("r.yaml", "--force", "write"))
    assert statuses["write"] == "built"
    assert statuses["upper"] == "cached"  # same bytes: early cutoff


def test_no_cache_reruns_everything(project):
    setup_hello(project)
    project.run()
    statuses = project.statuses(project.run("r.yaml", "--no-cache"))
    assert set(statuses.values()) == {"built"}


def test_lock_file_records_keys_inputs_outputs_and_is_stable(project):
    setup_hello(project)
    project.run()
    lock_path = project.root / "r.lock.json"
    lock = json.loads(lock_path.read_text())
    assert lock["schema"] == 1
    count = lock["steps"]["count"]
    assert count["inputs"] == {"data": "data.txt"}
    assert count["outputs"]["n"]["path"] == "count/n"  # inside the build directory
    assert set(count["parts"]) >= {"params", "inputs", "env", "executor", "kind"}
    before = lock_path.read_bytes()
    mtime = lock_path.stat().st_mtime_ns
    project.run()
    assert lock_path.read_bytes() == before
    assert lock_path.stat().st_mtime_ns == mtime  # a no-op run does not rewrite it


def test_failure_fails_dependents_and_keep_going_finishes_the_rest(project):
    project.write("r.yaml", """
        steps:
          bad: {uses: shell, with: {cmd: 'echo oops; exit 3'}}
          after: {uses: shell, from: bad, with: {cmd: 'true'}}
          other: {uses: shell, with: {cmd: 'echo fine > ${out.o}'}, outputs: [o]}
    """)
    events = project.run("r.yaml", "-j", "1", "--keep-going", check=1)
    statuses = project.statuses(events)
    assert statuses == {"bad": "failed", "after": "skipped", "other": "built"}
    failed = [e for e in events if e.get("step") == "bad" and e["event"] == "step_finished"][0]
    assert failed["message"] == "command exited with status 3"
    assert Path(failed["log"]).read_text().splitlines()[-1] == "oops"


def test_without_keep_going_nothing_new_starts_after_a_failure(project):
    """``bad`` fails while ``slow`` runs beside it; afterwards a slot is free, ``third`` (which
    needs nothing) and ``after_slow`` (whose upstream succeeds) are ready, and neither starts."""
    project.write("r.yaml", """
        steps:
          bad: {uses: shell, with: {cmd: 'sleep 0.3; exit 1'}}
          slow: {uses: shell, with: {cmd: 'sleep 2; echo ok > ${out.o}'}, outputs: [o]}
          third: {uses: shell, with: {cmd: 'touch $BUILDGRAPH_RECIPE_DIR/third.ran'}}
          after_slow: {uses: shell, from: slow,
                       with: {cmd: 'touch $BUILDGRAPH_RECIPE_DIR/after_slow.ran'}}
    """)
    events = project.run("r.yaml", "-j", "2", check=1)
    started = [e["step"] for e in events if e["event"] == "step_started"]
    assert started == ["bad", "slow"]
    statuses = project.statuses(events)
    assert statuses == {"bad": "failed", "slow": "built", "third": "skipped",
                        "after_slow": "skipped"}
    finished = {e["step"]: e for e in events if e["event"] == "step_finished"}
    for step in ("third", "after_slow"):
        assert finished[step]["message"].startswith("not started: an earlier step failed")
        assert not (project.root / f"{step}.ran").exists()
    proc = project.cli("run", "r.yaml", "-j", "2")
    assert proc.returncode == 1
    assert "✗ failed    bad: command exited with status 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_step_leaves_nothing_in_cache_or_build_dir(project):
    project.write("r.yaml", """
        steps:
          half: {uses: shell, with: {cmd: 'echo partial > ${out.o}; exit 1'}, outputs: [o]}
    """)
    project.run(check=1)
    assert not (project.build / "r" / "half" / "o").exists()
    assert not list((project.cache / "actions").rglob("*.json")) if (project.cache / "actions").exists() else True
    assert not any((project.cache / "tmp").iterdir())


def test_missing_declared_output_fails_the_step(project):
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'true'}, outputs: [o]}\n")
    events = project.run(check=1)
    msg = [e for e in events if e["event"] == "step_finished"][0]["message"]
    assert msg == "declared output 'o' (o) was not written"


def test_directory_outputs_are_cached_and_restored(project):
    project.write("r.yaml", """
        steps:
          tree: {uses: shell, with: {cmd: 'mkdir -p ${out.d}/sub && echo 1 > ${out.d}/a &&
                                            echo 2 > ${out.d}/sub/b'}, outputs: [d]}
          use: {uses: shell, from: tree, with: {cmd: 'cat ${in.tree.d}/sub/b > ${out.o}'},
                outputs: [o]}
    """)
    project.run()
    d = project.build / "r" / "tree" / "d"
    assert (d / "sub" / "b").read_text() == "2\n"
    import shutil
    shutil.rmtree(d)
    statuses = project.statuses(project.run())
    assert statuses == {"tree": "restored", "use": "cached"}
    assert (d / "a").read_text() == "1\n"


def test_symlink_output_pointing_outside_is_rejected(project):
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'ln -s /etc/passwd "
                            "${out.o}'}, outputs: [o]}\n")
    events = project.run(check=1)
    msg = [e for e in events if e["event"] == "step_finished"][0]["message"]
    assert "symbolic link" in msg


def test_matrix_expands_and_binds_by_shared_axis(project):
    project.write("r.yaml", """
        steps:
          gen:
            uses: shell
            matrix: {p: [fp16, fp32]}
            with: {cmd: 'echo ${matrix.p} > ${out.o}'}
            outputs: [o]
          use:
            uses: shell
            matrix: {p: [fp16, fp32]}
            with: {cmd: 'cat ${in.gen.o} > ${out.o}'}
            outputs: [o]
          all:
            uses: shell
            from: gen
            with: {cmd: 'ls > ${out.o}'}
            outputs: [o]
    """)
    graph = buildgraph.load(project.root / "r.yaml")
    assert graph.steps["use@fp16"].upstream == ("gen@fp16",)
    assert set(graph.steps["all"].upstream) == {"gen@fp16", "gen@fp32"}
    project.run()
    assert (project.build / "r" / "use@fp32" / "o").read_text() == "fp32\n"


def test_variables_keep_their_type_when_used_alone(project):
    project.write("r.yaml", """
        vars: {n: 3, name: "x"}
        steps:
          a:
            uses: shell
            timeout: ${vars.n}
            with: {cmd: 'echo ${vars.name}-${vars.n}'}
    """)
    graph = buildgraph.load(project.root / "r.yaml", use_cache=False)
    assert graph.steps["a"].timeout == 3
    assert graph.steps["a"].raw_params["cmd"] == "echo x-3"


def test_python_api_mirrors_the_cli(project):
    setup_hello(project)
    result = buildgraph.run(project.root / "r.yaml", targets=["upper"],
                            set={"greeting": "hi"}, cache_dir=project.cache,
                            build_dir=project.build / "api")
    assert result.ok
    assert result["upper"].status == "built"
    assert result["upper"].outputs["txt"].read_text() == "HI, WORLD\n"
    again = buildgraph.run(project.root / "r.yaml", targets=["upper"], set={"greeting": "hi"},
                           cache_dir=project.cache, build_dir=project.build / "api")
    assert again["upper"].status == "cached"


def test_python_steps_run_in_workers_and_their_source_is_an_input(project):
    project.write("helpers.py", "def suffix():\n    return '!'\n")
    project.write("steps.py", """
        from helpers import suffix

        def shout(inputs, outputs, word):
            outputs['o'].write_text(word.upper() + suffix())
            return {'length': len(word)}
    """)
    project.write("r.yaml", """
        steps:
          a:
            uses: python
            with: {function: 'steps.py:shout', args: {word: hey}}
            outputs: [o]
    """)
    events = project.run()
    done = [e for e in events if e["event"] == "step_finished"][0]
    assert done["status"] == "built" and done["meta"] == {"length": 3}
    assert (project.build / "r" / "a" / "o").read_text() == "HEY!"
    project.write("helpers.py", "def suffix():\n    return '?'\n")  # a local import changed
    plan = json.loads(project.cli("plan", "r.yaml", "--json", check=0).stdout)
    assert plan["steps"][0]["reasons"] == ["input helpers.py changed"]
    project.run()
    assert (project.build / "r" / "a" / "o").read_text() == "HEY?"


def test_python_step_exception_is_one_line_and_traceback_goes_to_log(project):
    project.write("steps.py", "def boom(inputs, outputs):\n    raise ValueError('bad value')\n")
    project.write("r.yaml", "steps:\n  a: {uses: python, with: {function: 'steps.py:boom'}}\n")
    proc = project.cli("run", "r.yaml")
    assert proc.returncode == 1
    assert "✗ failed    a: ValueError: bad value" in proc.stderr
    log = (project.build / "r" / ".logs" / "a.log").read_text()
    assert "Traceback" in log and "raise ValueError" in log


def test_worker_crash_fails_one_step_not_the_run(project):
    project.write("steps.py", """
        import os, signal

        def crash(inputs, outputs):
            os.kill(os.getpid(), signal.SIGSEGV)

        def fine(inputs, outputs):
            outputs['o'].write_text('ok')
    """)
    project.write("r.yaml", """
        steps:
          crash: {uses: python, with: {function: 'steps.py:crash'}}
          fine: {uses: python, with: {function: 'steps.py:fine'}, outputs: [o]}
    """)
    events = project.run("r.yaml", "-k", check=1)
    statuses = project.statuses(events)
    assert statuses == {"crash": "failed", "fine": "built"}
    msg = [e for e in events if e.get("step") == "crash" and e["event"] == "step_finished"][0]
    assert msg["message"] == "the worker process died (SIGSEGV)"


def test_timeout_kills_the_step(project):
    project.write("r.yaml", "steps:\n  slow: {uses: shell, timeout: 0.5, with: {cmd: 'sleep 30'}}\n")
    events = project.run(check=1)
    msg = [e for e in events if e["event"] == "step_finished"][0]
    assert msg["message"] == "command timed out after 0.5 s and was killed"
    assert msg["wall_s"] < 10


def test_cache_false_always_runs(project):
    project.write("r.yaml", "steps:\n  a: {uses: shell, cache: false, with: {cmd: 'date > ${out.o}'},"
                            " outputs: [o]}\n")
    project.run()
    assert project.statuses(project.run()) == {"a": "built"}


def test_log_command_prints_the_step_log(project, capsys):
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo from-the-step'}}\n")
    project.run()
    assert run_cli(["log", "r.yaml", "a"]) == 0
    assert "from-the-step" in capsys.readouterr().out


def test_python_m_buildgraph_works_like_the_console_script(project):
    setup_hello(project)
    proc = project.cli("run", "r.yaml", check=0)
    assert "ok: hello: 3 steps: 3 built, 0 cached" in proc.stderr
