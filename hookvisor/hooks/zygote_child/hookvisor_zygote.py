"""The warm executor's interpreter (hookvisor.hooks.zygote starts it; stdlib only).

Started by the agent as the hook user with the interpreter hooks name
(`/usr/bin/python3 hookvisor_zygote.py FD`), from a clean fd table: 0-2
/dev/null and FD, a SOCK_SEQPACKET socket to the agent. It imports and warms
what Python hooks use (one parse and write of a sample domain XML, then
gc.freeze(): lazy set-up and caches are then shared with every child, not
redone), says hello, and then per request starts one hook:

    request: "path\\0argv0\\0umask\\0#!line\\0NAME=value\\0..." with 4 fds (SCM_RIGHTS):
             reply socket, the hook's stdin, stdout, stderr

The hook's process is created with clone(CLONE_PARENT): it is the agent's
child, not ours, exactly as a hook the agent spawned cold (getppid() is the
agent, the agent reaps it, a pidfd on it works, and our death loses nothing).
On the reply socket we send "P<pid>" (or "E<errno>" if clone failed); the
child, once it is in its own process group with its environment and streams,
sends "R<pid>" (or "X<pid>:<errno>" if the hook user may not execute the
script, "N<pid>" if its #! line is no longer the one the agent read; then it
exits 127),
closes every other descriptor and runs the script as `python3 path` would.

Spares: clone() of this process and a child's first writes to the pages it
shares with us (copy-on-write faults) were most of a warm hook's start. So one
child, the spare, is cloned ahead (also clone(CLONE_PARENT)), warms up on a
small sample and says "r" to us; a request that finds it ready goes to it (the
same fds, over its own socket) and "P<pid>" names it; one that does not gets
a clone as above. Each spare is announced to the agent on the control socket,
"S<pid>", before we read the next request: the agent reaps the spares no
request reached. A spare exits when we do.

Single-threaded whenever it clones; not dumpable (a hook, running as the same
user, cannot ptrace it to tamper with the next hooks); exits when the agent
closes its end.
"""

import contextlib
import gc
import os
import select
import signal
import socket
import sys

_REQUEST_MAX = 1 << 20
_PR_SET_DUMPABLE = 4
_CLONE_PARENT = 0x00008000
_CLONE_CHILD_SETTID = 0x01000000
_CLONE_CHILD_CLEARTID = 0x00200000
# clone(2)'s number and argument order differ by architecture.
_CLONE = {"x86_64": (56, "ctid_then_tls"), "aarch64": (220, "tls_then_ctid")}


class _Cloner:
    """fork(), but the child's parent is our parent (CLONE_PARENT).

    os.fork() cannot say so; the raw system call can, with the two things
    glibc's fork does for the child that matter here: the thread's cached tid
    (CLONE_CHILD_SETTID into glibc's struct pthread, found by looking for a
    thread's tid in it: raise() and locks use it) and Python's own before and
    after fork work (PyOS_BeforeFork/AfterFork_*: import lock, threading's
    state, os.register_at_fork callbacks).
    """

    def __init__(self):
        import ctypes
        import platform
        import threading

        number, order = _CLONE[platform.machine()]
        libc = ctypes.PyDLL(None)  # PyDLL: the GIL is held across the calls
        libc.pthread_self.restype = ctypes.c_void_p
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        found = []

        def probe():
            me = libc.pthread_self()
            tid = threading.get_native_id()
            words = (ctypes.c_int * 512).from_address(me)
            found.extend(i for i in range(512) if words[i] == tid)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        if len(found) != 1:
            raise RuntimeError(f"cannot locate the thread id in struct pthread: {found}")
        self._ctid = ctypes.c_void_p(libc.pthread_self() + found[0] * 4)
        self._number = ctypes.c_long(number)
        self._order = order
        self._libc = libc
        self._api = ctypes.pythonapi
        self._c_long = ctypes.c_long

    def set_environ(self, items):
        """The process's environment becomes `items` (b"NAME=value"), at C level
        and in os.environ, in that order, as execve(2) would have set it.

        One assignment of libc's `environ` to a new array instead of an
        unsetenv() and a putenv() per variable (0.3 ms for 35 variables in a
        fresh child, whose every write is a copy-on-write fault). glibc's
        setenv() copies an array it did not allocate before changing it, so a
        hook's own os.environ[...] = ... and putenv() work as usual.
        """
        import ctypes

        items = [item for item in items if b"=" in item]
        array = (ctypes.c_char_p * (len(items) + 1))(*items, None)
        global _ENVIRON
        _ENVIRON = array  # the strings must live as long as the process
        ctypes.c_void_p.in_dll(self._libc, "environ").value = ctypes.addressof(array)
        data = os.environ._data
        data.clear()
        for item in items:
            name, _, value = item.partition(b"=")
            if name not in data:  # getenv(3) finds the first of duplicates
                data[name] = value

    def dumpable(self, flag):
        self._libc.prctl(_PR_SET_DUMPABLE, int(flag), 0, 0, 0)

    def clone(self):
        long = self._c_long
        flags = long(_CLONE_PARENT | _CLONE_CHILD_SETTID | _CLONE_CHILD_CLEARTID | signal.SIGCHLD)
        zero = long(0)
        if self._order == "ctid_then_tls":
            args = (flags, zero, zero, self._ctid, zero)
        else:
            args = (flags, zero, zero, zero, self._ctid)
        self._api.PyOS_BeforeFork()
        pid = self._libc.syscall(self._number, *args)
        if pid == 0:
            self._api.PyOS_AfterFork_Child()
            return 0
        self._api.PyOS_AfterFork_Parent()
        if pid < 0:
            import ctypes

            raise OSError(ctypes.get_errno() or 11, "clone failed")
        return pid


def _sample_domain(count=40):
    devices = "".join(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='/var/lib/images/disk{i}.img'/><target dev='vd{i}' bus='virtio'/></disk>"
        if i % 2 == 0 else
        f"<interface type='bridge'><mac address='52:54:00:00:00:{i:02x}'/>"
        "<source bridge='br0'/><model type='virtio'/></interface>"
        for i in range(count)
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        "<domain type='kvm' xmlns:ovirt='http://ovirt.org/vm/1.0'><name>warm</name>"
        "<uuid>00000000-0000-0000-0000-000000000000</uuid><memory unit='MiB'>64</memory>"
        "<metadata><ovirt:vm><ovirt:x>1</ovirt:x></ovirt:vm></metadata>"
        f"<os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>"
    )


def _ours(name):
    """Whether `name` imports from hookvisor's helpers (not, say, a real VDSM's:
    importing that here could have side effects a hook would not expect)."""
    from importlib.util import find_spec

    helpers = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "helpers") + os.sep
    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and (spec.origin or "").startswith(helpers)


def _warm():
    """Import and exercise what hooks use, so that children share it."""
    import xml.dom.minidom  # noqa: F401

    if _ours("hooking"):
        import hooking

        hooking.tobool("true")
        hooking._warm_dom()  # its faster read_domxml and write_domxml, checked here once
    if _ours("vdsm"):
        from vdsm.hook import hooking as _alias  # noqa: F401

    for name in ("subprocess", "tempfile", "shutil", "traceback", "linecache", "re",
                 "importlib.machinery", "atexit"):
        __import__(name)
    _exercise()


def _exercise(count=40, pretty=True):
    """What a typical hook does (parse, edit and write a domain XML; JSON;
    compile a script): in the zygote, the lazy set-up and caches; in a spare,
    the copy-on-write faults of the pages it touches, paid before a hook waits."""
    import json
    from xml.dom import minidom

    # hooking's own read and write (its fast path when it has one): what hooks call.
    fast = getattr(sys.modules.get("hooking"), "_fast_dom", None)
    data = _sample_domain(count).encode("utf-8")
    doc = (fast is not None and fast.parse(data)) or minidom.parseString(data)
    for tag in ("disk", "interface", "source"):
        for node in doc.getElementsByTagName(tag):
            node.setAttribute("warm", "1")
            node.getAttribute("warm")
    new = doc.createElement("warm")
    new.appendChild(doc.createTextNode("x"))
    doc.documentElement.appendChild(new)
    (fast is not None and fast.toxml(doc)) or doc.toxml(encoding="utf-8")
    if pretty:
        doc.toprettyxml(encoding="utf-8")
    doc.unlink()
    json.dumps(json.loads('{"a": [1, 2.5, "x", null, true], "b": {"c": "d"}}'), indent=2)
    # The compiler's lazily built state: measured 0.8 ms of a child's first
    # compile() when not done here.
    compile(b"# -*- coding: utf-8 -*-\nimport os\nif __name__ == '__main__':\n    x = [1]\n",
            "<warm>", "exec", dont_inherit=True)


# --- in the child -----------------------------------------------------------------


def _exit_code(exc):
    """What the interpreter makes of an uncaught SystemExit (Python/pythonrun.c)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        # (int)PyLong_AsLong(code); out of a C long's range it is -1.
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 255
    try:
        if sys.stderr is not None:
            sys.stderr.write(f"{code}\n")
    except Exception:
        pass
    return 1


def _clear_module_dict(d):
    """Like the interpreter's teardown of a module: names with a leading
    underscore first, then the rest (so that __del__ methods see builtins)."""
    for phase in (True, False):
        for key in list(d):
            if key != "__builtins__" and isinstance(key, str) and key.startswith("_") == phase:
                d[key] = None


def _finish(status, interrupted):
    """Py_FinalizeEx's observable part: non-daemon threads joined, atexit
    callbacks run, std streams flushed (a failure: 120), objects still held by
    the script finalized (a file it left open is flushed), then exit."""
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            status = 120
    main = sys.modules.get("__main__")
    if main is not None:
        with contextlib.suppress(BaseException):
            _clear_module_dict(main.__dict__)
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    if interrupted:
        # As the interpreter does for an uncaught KeyboardInterrupt: die of SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _run(path, source):
    """The script as __main__, as `python3 path` runs it; its exit status."""
    import builtins
    from importlib.machinery import SourceFileLoader

    main = type(sys)("__main__")  # __name__, __doc__, __package__, __loader__, __spec__
    main.__loader__ = SourceFileLoader("__main__", path)
    # The rest in the order the interpreter sets them (globals() shows it).
    main.__annotations__ = {}
    main.__builtins__ = builtins
    main.__file__ = path
    main.__cached__ = None
    sys.modules["__main__"] = main
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit as e:
        return _exit_code(e), False
    except BaseException as e:
        tb = e.__traceback__
        # The frames above the script's own (this function) are not the script's.
        tb = tb.tb_next if tb is not None and tb.tb_frame is sys._getframe() else tb
        # The display prints the exception's own __traceback__, not the argument.
        e.__traceback__ = tb
        sys.last_type, sys.last_value, sys.last_traceback = type(e), e, tb
        with contextlib.suppress(BaseException):
            sys.excepthook(type(e), e, tb)
        return 1, isinstance(e, KeyboardInterrupt)
    return 0, False


def _forget_control(control):
    """In a child: the zygote's socket to the agent is not the hook's."""
    control.detach()
    os.close(control_fd)


def _child(cloner, request, fds):
    reply, stdin, stdout, stderr = fds
    try:
        os.setpgid(0, 0)
        cloner.dumpable(True)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        fields = request.split(b"\0")
        path, argv0 = os.fsdecode(fields[0]), os.fsdecode(fields[1])
        umask = int(fields[2], 8)
        shebang = fields[3]
        cloner.set_environ(fields[4:])
        if not os.access(path, os.X_OK):
            # execve(2) would fail: the runner reports it as it does cold.
            try:
                os.stat(path)
                err = 13  # EACCES: there, but not executable by this user
            except OSError as e:
                err = e.errno or 13
            os.write(reply, b"X%d:%d" % (os.getpid(), err))
            os._exit(127)
        os.umask(umask)
        sys.argv[:] = [path]
        sys.orig_argv[:] = [argv0, path]
        sys.path[0] = os.path.dirname(os.path.realpath(path))
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            source = None
            failure = e
        else:
            if source.split(b"\n", 1)[0] != shebang:
                # Replaced since the agent chose the warm path for it: let the
                # kernel read its #! line (nothing of it ran here).
                os.write(reply, b"N%d" % os.getpid())
                os._exit(127)
        os.write(reply, b"R%d" % os.getpid())
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
    except BaseException:
        os._exit(127)  # before "ready": the agent runs the script cold
    # gc stays enabled, as in a fresh interpreter: gc.freeze() above already
    # keeps collections off the zygote's objects (gc.disable() here measured
    # no faster on the 100-device hook, and would be observable).
    if source is None:
        # What the interpreter says and does when it cannot open its script.
        sys.stderr.write(f"{argv0}: can't open file {path!r}: "
                         f"[Errno {failure.errno}] {failure.strerror}\n")
        sys.stderr.flush()
        os._exit(2)
    status, interrupted = _run(path, source)
    _finish(status, interrupted)


def _new_spare(cloner, control):
    """(pid, socket) of a spare: a child cloned ahead of the next request.

    clone() and the first writes of a child to the pages it shares with us
    (copy-on-write faults) are most of a warm hook's start; a spare pays them
    while the previous hook runs. It waits, not dumpable, for one request on
    its own socket and then is exactly the child a clone at that request would
    be. It exits when we do (end of file). None if it cannot be made: then each
    request gets its clone as it comes.
    """
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return None
    try:
        pid = cloner.clone()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ours.close()
            _forget_control(control)
            with contextlib.suppress(Exception):
                # A hook's first steps, on a small document: the pages they
                # write are then this process's own (measured: a 40-device
                # warm-up with toprettyxml cost more CPU than it saved).
                cloner.set_environ([b"%s=%s" % item for item in os.environb.items()])
                _exercise(8, pretty=False)
            theirs.send(b"r")
            while True:
                try:
                    request, fds, flags, _ = socket.recv_fds(theirs, _REQUEST_MAX, 4)
                    break
                except InterruptedError:
                    continue
            theirs.close()
        except BaseException:
            os._exit(127)
        if len(fds) != 4 or flags & socket.MSG_CTRUNC:
            os._exit(127)  # end of file: the zygote is gone
        _child(cloner, request, fds)
        os._exit(127)  # not reached
    theirs.close()
    return pid, ours


def _ready(sock):
    """Whether a spare is done with its warm-up; one that is not would make
    the request wait longer than a clone takes: it stays for the next one."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    with contextlib.suppress(OSError):
        sock.recv(1, socket.MSG_DONTWAIT)
    # "r", or end of file if it died: then the send fails, a clone takes the
    # request and a new spare is made.
    return True


def _serve(cloner, control):
    spare = None
    while True:
        if spare is None:
            spare = _new_spare(cloner, control)
            if spare is not None:
                # The agent reaps its children: it must know this one even if
                # no request ever reaches it.
                try:
                    control.send(b"S%d" % spare[0])
                except OSError:
                    return
        try:
            request, fds, flags, _ = socket.recv_fds(control, _REQUEST_MAX, 4)
        except InterruptedError:
            continue
        if not request and not fds:
            return  # the agent closed its end
        if len(fds) != 4 or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            continue
        pid = -1
        if spare is not None and _ready(spare[1]):
            spare_pid, spare_sock = spare
            spare = None
            with contextlib.suppress(OSError):
                socket.send_fds(spare_sock, [request], fds)
                pid = spare_pid
            spare_sock.close()  # a spare that did not take it exits
        if pid < 0:
            try:
                pid = cloner.clone()
            except OSError as e:
                os.write(fds[0], b"E%d" % (e.errno or 11))
            if pid == 0:
                _forget_control(control)
                _child(cloner, request, fds)
                os._exit(127)  # not reached
        if pid > 0:
            with contextlib.suppress(OSError):
                os.write(fds[0], b"P%d" % pid)
        for fd in fds:
            os.close(fd)


control_fd = -1
_ENVIRON = None


def main():
    global control_fd
    control_fd = int(sys.argv[1])
    control = socket.socket(fileno=control_fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        cloner = _Cloner()
        cloner.dumpable(False)
        _warm()
    except BaseException as e:
        control.send(f"F{type(e).__name__}: {e}".encode("utf-8", "replace")[:4000])
        return
    gc.collect()
    gc.freeze()
    control.send(f"H{sys.version_info[0]}.{sys.version_info[1]}".encode())
    _serve(cloner, control)


if __name__ == "__main__":
    main()
