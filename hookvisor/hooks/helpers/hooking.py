"""Helpers for Python hook scripts (VDSM's `hooking` module, same API).

Put on a hook's PYTHONPATH by the runner; stdlib only, and imports of the
heavier modules (minidom, json, subprocess) are deferred to the function that
needs them, so that `import hooking` costs a hook next to nothing.
"""

# ruff: noqa: SIM112  (the variable names are VDSM's contract)
import os
import sys

__all__ = [
    "dump_vm_launch_flags_to_file",
    "execCmd",
    "exit_hook",
    "load_vm_launch_flags_from_file",
    "log",
    "read_domxml",
    "read_json",
    "tobool",
    "write_domxml",
    "write_json",
]

_DEFAULT_RUN_DIR = "/run/hookvisor"


def tobool(s):
    """'true'/'True'/'1' -> True; anything else (None, 'false', garbage) -> False."""
    try:
        if s is None:
            return False
        if isinstance(s, (bool, int)):
            return bool(s)
        if s.lower() == "true":
            return True
        return bool(int(s))
    except (AttributeError, TypeError, ValueError):
        return False


# The warm executor's interpreter sets this (_warm_dom) before it forks hooks:
# _hooking_dom, faster equivalents of minidom.parseString and toxml, which give
# the same tree and bytes or None. A cold hook keeps the plain calls: compiling
# and checking that module would cost it about what it saves.
_fast_dom = None


def read_domxml():
    """The domain (or device) XML of this event as an xml.dom.minidom Document."""
    from xml.dom import minidom

    with open(os.environ["_hook_domxml"], "rb") as f:
        data = f.read()
        doc = None if _fast_dom is None else _fast_dom.parse(data)
        if doc is None:
            # Called here, outside any handler, so that its errors and their
            # tracebacks are the ones minidom.parseString always gave.
            return minidom.parseString(data)
        return doc


def write_domxml(domxml):
    """Write a minidom Document back for the next hook and the agent."""
    with open(os.environ["_hook_domxml"], "wb") as f:
        data = None if _fast_dom is None else _fast_dom.toxml(domxml)
        if data is None:
            data = domxml.toxml(encoding="utf-8")
        f.write(data)


def _warm_dom():
    """For the warm executor's interpreter (hookvisor_zygote), before it forks
    hooks: load _hooking_dom from beside this file, and use it if it is usable
    here (_hooking_dom.warm). Whether it is: True or False; never raises."""
    global _fast_dom
    try:
        from importlib.util import module_from_spec, spec_from_file_location

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hooking_dom.py")
        spec = spec_from_file_location("_hooking_dom", path)
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.warm():
            _fast_dom = module
    except Exception:
        _fast_dom = None
    return _fast_dom is not None


def read_json():
    import json

    with open(os.environ["_hook_json"], encoding="utf-8") as f:
        return json.load(f)


def write_json(data):
    import json

    with open(os.environ["_hook_json"], "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


def log(message):
    """To stderr: recorded with the run, and shown to the client on a veto."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def exit_hook(message, return_code=2):
    """Print `message` to stderr and end the hook (2: fail, stop the chain)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(return_code)


def execCmd(argv, sudo=False, raw=False, data=None, env=None, cwd=None):
    """Run argv; (rc, out, err) with out/err as lists of lines (bytes if raw)."""
    import subprocess

    command = list(argv)
    if sudo:
        command = ["sudo", "-n", *command]
    proc = subprocess.run(
        command,
        input=data if data is None or isinstance(data, bytes) else data.encode("utf-8"),
        capture_output=True,
        env=env,
        cwd=cwd,
    )
    if raw:
        return proc.returncode, proc.stdout, proc.stderr
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    err = proc.stderr.decode("utf-8", "replace").splitlines()
    return proc.returncode, out, err


def _launchflags_path(vm_id):
    if not vm_id or "/" in vm_id or vm_id in (".", ".."):
        raise ValueError(f"bad vm id {vm_id!r}")
    directory = os.environ.get("_hook_launchflags_dir") or os.path.join(
        os.environ.get("HOOKVISOR_RUN_DIR") or _DEFAULT_RUN_DIR, "launchflags"
    )
    return directory, os.path.join(directory, vm_id)


def load_vm_launch_flags_from_file(vm_id):
    """The launch flags (an int, libvirt's VIR_DOMAIN_START_* bits) set for this VM."""
    _, path = _launchflags_path(vm_id)
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return 0
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


def dump_vm_launch_flags_to_file(vm_id, flags):
    """Ask the agent to start the VM with these flags (1: VIR_DOMAIN_START_PAUSED)."""
    directory, path = _launchflags_path(vm_id)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{vm_id}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(int(flags)))
    os.replace(tmp, path)

