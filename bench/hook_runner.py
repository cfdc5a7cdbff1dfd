"""Benchmark: the hook engine against a bare loop of subprocess.run.

Part 1: an event with 10 no-op `#!/bin/sh` hooks, run many times; the engine
(records on, validation on: before_vm_start modifies) and a bare loop over the
same scripts with the same environment and data file, interleaved round by
round in one process so that drift (CPU frequency, page cache) hits both alike.

Part 2: 10 Python hooks that `import hooking`, read and write the domain XML of
a VM with 100 devices, side by side, interleaved: the engine with the warm
executor (hookvisor.hooks.zygote), the engine cold (warm_hooks off), and a bare
loop of subprocess.run of the same scripts; prints python_hook_ms (median ms
per hook) for each.

Run as root, hooks run as the hook user (setting hook_user, default
`hookvisor`) on both sides: the engine switches user, and so does the bare loop
(subprocess.run with user=, group=, extra_groups=), so the ratio compares the
same work.

Last line: runner_overhead_ratio=X.XX (median engine chain / median bare chain).
Usage: .venv/bin/python bench/hook_runner.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hookvisor.hooks import identity
from hookvisor.hooks.environment import HELPERS_DIR
from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import HookRunner, RunnerConfig

HOOK_USER = "hookvisor"
# Run as root, hooks run as the hook user, who cannot reach a venv under /root.
HOOK_PYTHON = "/usr/bin/python3" if os.geteuid() == 0 and os.path.exists(
    "/usr/bin/python3") else sys.executable

EVENT = "before_vm_start"
UUID = "6f1c9a4e-2d0b-4c55-9d1e-0a8f3b7c5e21"


def domain_xml(devices: int) -> str:
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='/var/lib/images/disk{i}.img'/>"
        f"<target dev='vd{i}' bus='virtio'/></disk>\n"
        if i % 2 == 0
        else f"<interface type='bridge'><mac address='52:54:00:00:{i // 256:02x}:{i % 256:02x}'/>"
        f"<source bridge='br0'/><model type='virtio'/></interface>\n"
        for i in range(devices)
    )
    return (
        f"<domain type='kvm'><name>bench</name><uuid>{UUID}</uuid>"
        f"<memory unit='MiB'>1024</memory><vcpu>2</vcpu>"
        f"<os><type arch='x86_64' machine='q35'>hvm</type></os>\n"
        f"<devices>\n{disks}</devices></domain>\n"
    )


def make_hooks(root: Path, body: str, count: int = 10) -> Path:
    directory = root / EVENT
    directory.mkdir(parents=True)
    for i in range(count):
        script = directory / f"{i:02d}_hook"
        script.write_text(body)
        script.chmod(0o755)
    return root


def bare_chain(scripts: list[str], data: str, run_dir: str,
               user: identity.HookUser | None, extra: dict[str, str] | None = None) -> None:
    """What any runner must do at least: a data file, an environment, one run
    each (as the hook user when there is one)."""
    fd, path = tempfile.mkstemp(dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            if user is not None:
                os.fchown(f.fileno(), user.uid, user.gid)
        env = dict(os.environ, vmId=UUID, _hook_domxml=path, **(extra or {}))
        ids: dict[str, object] = {}
        if user is not None:
            env.update(user.env())
            ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        for script in scripts:
            subprocess.run([script], env=env, stdout=subprocess.DEVNULL,  # type: ignore[call-overload]
                           stderr=subprocess.DEVNULL, check=False, **ids)
    finally:
        os.unlink(path)


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--py-rounds", type=int, default=10)
    args = parser.parse_args()

    user = identity.lookup(HOOK_USER) if identity.can_switch() else None
    work = Path(tempfile.mkdtemp(prefix="hookbench-"))
    try:
        work.chmod(0o711)  # the hook user reaches the hooks and the run dir through it
        run_dir = work / "run"
        run_dir.mkdir()
        records = RunRecords(work / "state" / "hookruns.sqlite")
        data = domain_xml(100)

        hooks = make_hooks(work / "sh", "#!/bin/sh\nexit 0\n")
        runner = HookRunner(RunnerConfig(hooks, run_dir), records=records)
        scripts = [str(p) for p in sorted((hooks / EVENT).iterdir())]

        def engine() -> None:
            result = runner.run(EVENT, data, vm_id=UUID)
            assert result.ok and len(result.runs) == 10, result.message()

        def bare() -> None:
            bare_chain(scripts, data, str(run_dir), user)

        for _ in range(10):  # warm up both: page cache, checksum cache, SQLite
            engine()
            bare()
        engine_t: list[float] = []
        bare_t: list[float] = []
        for i in range(args.rounds):
            # Alternate which goes first, so neither always follows the other.
            if i % 2:
                engine_t.append(timed(engine))
                bare_t.append(timed(bare))
            else:
                bare_t.append(timed(bare))
                engine_t.append(timed(engine))
        e_med, b_med = statistics.median(engine_t), statistics.median(bare_t)
        who = f"as {user.name} (uid {user.uid})" if user else f"as uid {os.geteuid()}"
        print(f"sh no-op hooks x10, {args.rounds} interleaved rounds, hooks run {who}:")
        print(f"  engine chain     median {e_med * 1000:7.2f} ms  ({e_med * 100:.3f} ms/hook)")
        print(f"  bare loop chain  median {b_med * 1000:7.2f} ms  ({b_med * 100:.3f} ms/hook)")
        print(f"  records kept: {records.count()}")

        py_body = (
            f"#!{HOOK_PYTHON}\n"
            "import hooking\n"
            "doc = hooking.read_domxml()\n"
            "doc.getElementsByTagName('domain')[0].setAttribute('bench', '1')\n"
            "hooking.write_domxml(doc)\n"
        )
        py_hooks = make_hooks(work / "py", py_body)
        py_scripts = [str(p) for p in sorted((py_hooks / EVENT).iterdir())]
        warm_runner = HookRunner(RunnerConfig(py_hooks, run_dir, warm_hooks=True),
                                 records=records)
        cold_runner = HookRunner(RunnerConfig(py_hooks, run_dir, warm_hooks=False),
                                 records=records)

        def py_chain(runner: HookRunner) -> Callable[[], None]:
            def run() -> None:
                result = runner.run(EVENT, data, vm_id=UUID)
                assert result.ok and len(result.runs) == 10, result.message()
                assert result.data.count('bench="1"') == 1, "the hooks did not write"
            return run

        sides: dict[str, Callable[[], None]] = {
            "warm": py_chain(warm_runner),
            "cold": py_chain(cold_runner),
            "bare subprocess.run": lambda: bare_chain(py_scripts, data, str(run_dir), user,
                                                      {"PYTHONPATH": str(HELPERS_DIR)}),
        }
        for fn in sides.values():
            fn()  # warm up: the zygote starts here
        times: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.py_rounds):
            order = list(sides.items())
            for name, fn in order[i % 3:] + order[:i % 3]:
                times[name].append(timed(fn) / 10)
        warm_started = warm_runner.warm.spawned
        warm_runner.close()
        bare_py: list[float] = []
        for _ in range(args.py_rounds):
            t0 = time.perf_counter()
            subprocess.run([HOOK_PYTHON, "-c", "pass"], check=True)
            bare_py.append(time.perf_counter() - t0)
        helpers = Path(__file__).resolve().parent.parent / "hookvisor" / "hooks" / "helpers"
        probe = ("import time; t = time.perf_counter(); import hooking; "
                 "print((time.perf_counter() - t) * 1000)")
        imports = [
            float(subprocess.run([HOOK_PYTHON, "-c", probe], check=True, text=True,
                                 capture_output=True,
                                 env=dict(os.environ, PYTHONPATH=str(helpers))).stdout)
            for _ in range(args.py_rounds)
        ]
        print(f"python hooks x10 (import hooking, read+write 100-device domain XML), "
              f"{args.py_rounds} rounds:")
        print(f"  python interpreter start alone: {statistics.median(bare_py) * 1000:.1f} ms")
        print(f"  import hooking: {statistics.median(imports):.2f} ms")
        for name, values in times.items():
            print(f"  {name:20s} python_hook_ms={statistics.median(values) * 1000:.1f}")
        print(f"  (warm path used for {warm_started} hook runs)")
        records.close()
        print(f"runner_overhead_ratio={e_med / b_med:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
