"""hooking's fast read_domxml/write_domxml (helpers/_hooking_dom.py, used in the warm
executor) against minidom.parseString and toxml: the same tree (every slot and
__dict__ entry of every node, domcheck.dump), the same bytes, the same errors, the
same side effects; its fallbacks; and under the interpreter hooks use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.dom import expatbuilder, minidom

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import HOOK_PYTHON

from bench.hook_runner import domain_xml
from hookvisor.hooks import zygote
from hookvisor.hooks.environment import HELPERS_DIR
from hookvisor.hooks.runner import HookRunner, RunnerConfig

from . import domcheck
from .util import DOMAIN, UUID

NAMES = ("hooking", "vdsm", "vdsm.hook", "vdsm.hook.hooking")
VAR = "_hook_domxml"  # where read_domxml and write_domxml find the document


@pytest.fixture(scope="module")
def hooking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """hooking as the warm executor has it: _warm_dom() done."""
    saved = {n: sys.modules.pop(n) for n in NAMES if n in sys.modules}
    sys.path.insert(0, str(HELPERS_DIR))
    old_env = os.environ.get(VAR)
    os.environ[VAR] = str(tmp_path_factory.mktemp("fastdom") / "domain.xml")
    try:
        import hooking

        assert hooking._fast_dom is None  # a cold hook's
        assert hooking._warm_dom()
        assert hooking._fast_dom is not None
        yield hooking
    finally:
        sys.path.remove(str(HELPERS_DIR))
        for n in NAMES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        if old_env is None:
            os.environ.pop(VAR, None)
        else:
            os.environ[VAR] = old_env


def _path() -> str:
    return os.environ[VAR]


# --- strategies: domcheck's specs and edits ----------------------------------------------

TEXT = st.one_of(
    st.sampled_from(domcheck.TEXTS),
    st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), max_size=4),
)
TEXTS = st.lists(TEXT, max_size=3).map("".join)
PIECES = st.lists(st.one_of(st.tuples(st.just("t"), TEXTS),
                            st.tuples(st.just("ref"), st.sampled_from(domcheck.REFS))),
                  max_size=3)
ELEMENT_NAMES = st.one_of(st.sampled_from(domcheck.NAMES[:9]), st.sampled_from(domcheck.NAMES))
XMLNS = st.lists(st.tuples(st.sampled_from(["", "p", "q", "ovirt-vm"]),
                           st.sampled_from(domcheck.URIS)),
                 max_size=3, unique_by=lambda d: d[0])
ATTRS = st.lists(st.tuples(st.sampled_from(domcheck.NAMES), PIECES, st.sampled_from("'\"")),
                 max_size=4, unique_by=lambda a: a[0])
OTHER_CHILDREN = st.one_of(
    st.tuples(st.just("text"), PIECES),
    st.tuples(st.just("cdata"), TEXTS.map(lambda t: t.replace("]]>", ""))),
    st.tuples(st.just("comment"), TEXTS.map(lambda t: t.replace("--", "").rstrip("-"))),
    st.tuples(st.just("pi"), st.sampled_from(["pi", "x-y", "xml"]),
              TEXTS.map(lambda t: t.replace("?>", ""))),
)


def _element(children: Any) -> Any:
    return st.tuples(st.just("el"), ELEMENT_NAMES, ATTRS, XMLNS, children, st.booleans())


ELEMENTS = st.recursive(
    _element(st.lists(OTHER_CHILDREN, max_size=3)),
    lambda inner: _element(st.lists(st.one_of(inner, OTHER_CHILDREN), max_size=4)),
    max_leaves=12,
)


def _with_decls(args: tuple[Any, list[tuple[str, str]]]) -> Any:
    el, decls = args
    have = {p for p, _ in el[3]}
    return (*el[:3], el[3] + [d for d in decls if d[0] not in have], *el[4:])


ROOTS = st.tuples(ELEMENTS, st.lists(st.tuples(st.sampled_from(["p", "q", "ovirt-vm"]),
                                               st.sampled_from(domcheck.URIS[:3])),
                                     max_size=3, unique_by=lambda d: d[0])).map(_with_decls)
MISC = st.lists(st.one_of(st.tuples(st.just("comment"), st.sampled_from([" c ", "", "é"])),
                          st.tuples(st.just("pi"), st.just("pi"), st.sampled_from(["", "d"])),
                          st.tuples(st.just("space"), st.sampled_from(["\n", " \t"]))),
                max_size=2)
SPECS = st.fixed_dictionaries({
    "bom": st.booleans(),
    "decl": st.none() | st.tuples(st.sampled_from("'\""),
                                  st.none() | st.sampled_from(domcheck.ENCODINGS),
                                  st.none() | st.sampled_from(["yes", "no"]),
                                  st.sampled_from([" ", "  ", "\n"])),
    "prolog": MISC,
    "doctype": st.none() | st.none() | st.sampled_from(domcheck.DOCTYPES),
    "root": ROOTS,
    "epilog": MISC,
    "crlf": st.booleans(),
})

IDX = st.integers(0, 20)
ETEXT = st.one_of(TEXTS, st.sampled_from(["\ud800", "\x00", "a--b", "]]>", "-", '"&<>']))
PLAIN_EDITS = st.one_of(
    st.tuples(st.just("set"), IDX, st.sampled_from(["bench", "x", "p:a", "type", "xmlns"]),
              ETEXT),
    st.tuples(st.just("setns"), IDX, st.sampled_from(domcheck.URIS[:3]),
              st.sampled_from(["p:z", "z", "q:type"]), ETEXT),
    st.tuples(st.just("remove"), IDX, IDX),
    st.tuples(st.just("element"), IDX, st.sampled_from(domcheck.NAMES)),
    st.tuples(st.just("elementns"), IDX, st.sampled_from(domcheck.URIS[:3]),
              st.sampled_from(["p:new", "new"])),
    st.tuples(st.just("text"), IDX, ETEXT),
    st.tuples(st.just("comment"), IDX, ETEXT),
    st.tuples(st.just("cdata"), IDX, ETEXT),
    st.tuples(st.just("pi"), IDX, st.just("t"), ETEXT),
    st.tuples(st.just("top"), IDX, ETEXT, st.booleans()),
    st.tuples(st.just("drop"), IDX, IDX),
    st.tuples(st.just("move"), IDX),
    st.tuples(st.just("data"), IDX, ETEXT),
    st.tuples(st.just("normalize"), IDX),
    st.tuples(st.just("clone"), IDX),
    st.tuples(st.just("rename"), IDX, st.sampled_from([None, "urn:p"]),
              st.sampled_from(["renamed", "p:renamed"])),
)
ODD_EDITS = st.one_of(
    st.tuples(st.just("value"), IDX, st.sampled_from([5, None, 0, 1.5, b"x"])),
    st.tuples(st.just("plainlist"), IDX),
    st.tuples(st.just("subclass"), IDX),
    st.tuples(st.just("unvalued"), IDX),
    st.tuples(st.just("unlink"), IDX),
)
EDITS = st.lists(st.one_of(PLAIN_EDITS, PLAIN_EDITS, PLAIN_EDITS, ODD_EDITS), max_size=6)

FAST = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --- properties ----------------------------------------------------------------------------


@FAST
@given(spec=SPECS, cut=st.none() | st.none() | st.none() | st.integers(0, 10_000))
def test_read_is_parsestring(hooking: ModuleType, spec: dict[str, Any], cut: int | None) -> None:
    """The same Document, node for node, or the same error (also for documents
    cut short: mostly not well-formed)."""
    data = domcheck.render(spec)
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    built = domcheck.compare_read(hooking, _path(), data)
    event(f"fast path: {built}")
    if built is False and cut is None and spec["doctype"] is None:
        # Well-formed without a DOCTYPE: then it was the fast path's.
        with pytest.raises(Exception):  # noqa: B017
            minidom.parseString(data)


@FAST
@given(spec=SPECS, edits=EDITS)
def test_write_is_toxml(hooking: ModuleType, spec: dict[str, Any],
                        edits: list[tuple[Any, ...]]) -> None:
    """After any edits: the same bytes in the file (or the same error and an empty
    file), the same documents afterwards."""
    data = domcheck.render(spec)
    try:
        minidom.parseString(data)
    except Exception:
        return
    wrote = domcheck.compare_write(hooking, _path(), data, edits)
    event(f"fast path: {wrote}")
    # (What may hold a "--" comment or a "]]>" section, or what toxml converts
    # or fails on, may go to toxml.)
    plain = all(e[0] not in ("value", "plainlist", "subclass", "unvalued", "comment", "cdata",
                             "unlink", "top", "data") for e in edits)
    if plain and spec["doctype"] is None:
        assert wrote, (data, edits)


def test_the_domain_xml_takes_the_fast_path(hooking: ModuleType) -> None:
    libvirt = (
        "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        "<name>vm</name><metadata xmlns:ovirt-vm='http://ovirt.org/vm/1.0'>"
        "<ovirt-vm:vm><ovirt-vm:custom><ovirt-vm:x>1</ovirt-vm:x></ovirt-vm:custom></ovirt-vm:vm>"
        "</metadata><!-- a comment --><devices>\n  <disk type='file'/>\n</devices>"
        "<qemu:commandline><qemu:arg value='-a&amp;b'/></qemu:commandline></domain>\n")
    for data in (domain_xml(100), domain_xml(1000), DOMAIN, libvirt,
                 "<?xml version='1.0' encoding='UTF-8' standalone='yes'?>\n" + libvirt):
        raw = data.encode()
        assert domcheck.compare_read(hooking, _path(), raw)
        assert domcheck.compare_write(hooking, _path(), raw, [("set", 0, "bench", "1")])


def test_the_dump_sees_what_differs() -> None:
    """The comparisons above can fail: the dump tells apart what minidom's own
    methods would (an unset slot, an attribute map not yet made, __dict__ order)."""
    def two() -> tuple[Any, Any]:
        data = b"<a x='1'><b/>t</a>"
        return minidom.parseString(data), minidom.parseString(data)

    a, b = two()
    assert domcheck.dump(a) == domcheck.dump(b)
    b.documentElement.firstChild.toxml()  # _ensure_attributes: None -> {}
    assert domcheck.dump(a) != domcheck.dump(b)
    a, b = two()
    del b.documentElement._attrs["x"].childNodes[0]._data
    assert domcheck.dump(a) != domcheck.dump(b)
    a, b = two()
    a.documentElement.setUserData("k", 1, None)
    b.documentElement.setUserData("k", 2, None)
    assert domcheck.dump(a) != domcheck.dump(b)
    a, b = two()
    a.version, a.encoding = "1.0", None
    b.encoding, b.version = None, "1.0"
    assert domcheck.dump(a) != domcheck.dump(b)


def test_what_it_leaves_to_minidom(hooking: ModuleType,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fast = hooking._fast_dom
    data = domain_xml(4).encode()
    doc = minidom.parseString(data)
    assert fast.parse(data) is not None and fast.toxml(doc) is not None
    # A DOCTYPE (entities, defaults from the DTD), and not a Document.
    assert fast.parse(b"<!DOCTYPE a [<!ENTITY e 'v'>]><a>&e;</a>") is None
    assert fast.toxml(doc.documentElement) is None
    # Whatever of minidom a hook patched: its patch does what it did before.
    monkeypatch.setattr(minidom.Element, "writexml",
                        lambda self, writer, *args: writer.write("<patched/>"))
    assert fast.toxml(doc) is None
    hooking.write_domxml(doc)
    assert Path(_path()).read_bytes() == b'<?xml version="1.0" encoding="utf-8"?><patched/>'
    monkeypatch.undo()
    Path(_path()).write_bytes(data)
    monkeypatch.setattr(minidom, "parseString", lambda data: "patched")
    assert hooking.read_domxml() == "patched"
    monkeypatch.undo()
    monkeypatch.setattr(expatbuilder.Namespaces, "start_element_handler",
                        expatbuilder.ExpatBuilder.start_element_handler)
    assert fast.parse(data) is None
    assert domcheck.dump(hooking.read_domxml()) == domcheck.dump(minidom.parseString(data))
    monkeypatch.undo()
    # An entry added (one that shadows a base class's) counts too.
    monkeypatch.setattr(minidom.Element, "toxml", minidom.Node.toxml, raising=False)
    assert fast.parse(data) is None and fast.toxml(doc) is None
    monkeypatch.undo()
    assert fast.parse(data) is not None and fast.toxml(doc) is not None


def test_errors_are_minidoms_own(hooking: ModuleType) -> None:
    """Raised by minidom itself, outside any handler of ours: no chained context."""
    Path(_path()).write_bytes(b"<a><b></a>")
    with pytest.raises(Exception) as bad:
        hooking.read_domxml()
    with pytest.raises(Exception) as plain:
        minidom.parseString(b"<a><b></a>")
    assert (type(bad.value), str(bad.value)) == (type(plain.value), str(plain.value))
    assert bad.value.__context__ is None and bad.value.__cause__ is None
    doc = minidom.parseString(b"<a/>")
    doc.documentElement.appendChild(doc.createComment("a--b"))
    with pytest.raises(ValueError, match="'--' is not allowed") as err:
        hooking.write_domxml(doc)
    assert err.value.__context__ is None
    assert Path(_path()).read_bytes() == b""


@pytest.mark.parametrize("depth", [50, 900, 985, 3000])
def test_deep_documents(hooking: ModuleType, depth: int) -> None:
    """No recursion where minidom has none (parsing); where toxml recurses, it
    decides (it fails where it always failed)."""
    data = b"<a>" * depth + b"x" + b"</a>" * depth
    assert domcheck.compare_read(hooking, _path(), data)
    domcheck.compare_write(hooking, _path(), data, [])


# --- in the interpreter hooks use ----------------------------------------------------------


@pytest.mark.parametrize("seed", ["1", "2"])
def test_under_the_hook_interpreter(seed: str) -> None:
    """domcheck's seeded corpus (documents, mutations, edits) under HOOK_PYTHON; a
    different hash seed each (the check's digest must not depend on it)."""
    proc = subprocess.run(
        [HOOK_PYTHON, str(Path(domcheck.__file__)), str(HELPERS_DIR), "600", seed],
        capture_output=True, text=True, check=False,
        env=dict(os.environ, PYTHONHASHSEED=seed))
    assert proc.returncode == 0, proc.stderr
    verdict, fast, fallback = proc.stdout.split()
    assert verdict == "ok" and int(fast) > 300 and int(fallback) > 100, proc.stdout


def test_patched_before_the_check_is_left_alone(tmp_path: Path) -> None:
    """A hook that patched minidom before hooking's first check: the check sees a
    function that is not the standard library's, and the fast path stays off."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HELPERS_DIR)!r})
        from xml.dom import minidom
        minidom.Text.writexml = lambda self, writer, *a: writer.write("T")
        import hooking
        print(hooking._warm_dom(), hooking._fast_dom)
    """)
    proc = subprocess.run([HOOK_PYTHON, "-c", script], capture_output=True, text=True,
                          check=True)
    assert proc.stdout == "False None\n"


pytestmark_warm = pytest.mark.skipif(
    not zygote.SUPPORTED
    or zygote.warm_target(zygote.Shebang(os.fsencode(HOOK_PYTHON), None), {}) is None,
    reason="no warm executor here")


@pytestmark_warm
def test_warm_hooks_use_it_and_cold_ones_do_not(tmp_path: Path) -> None:
    hooks_dir = tmp_path / "hooks"
    directory = hooks_dir / "before_vm_start"
    directory.mkdir(parents=True)
    script = directory / "10_xml"
    script.write_text(f"#!{HOOK_PYTHON}\n" + textwrap.dedent("""
        import hooking
        doc = hooking.read_domxml()
        domain = doc.getElementsByTagName('domain')[0]
        domain.setAttribute('hooked', 'a "quoted" & <bracketed> \\u00e9')
        domain.appendChild(doc.createComment(' by a hook '))
        domain.setAttribute('xmlns:ovirt-vm', 'http://ovirt.org/vm/1.0')
        meta = doc.createElementNS('http://ovirt.org/vm/1.0', 'ovirt-vm:x')
        meta.appendChild(doc.createTextNode('1 < 2'))
        domain.appendChild(meta)
        hooking.write_domxml(doc)
        print(hooking._fast_dom is not None and hooking._fast_dom._modules() is not None)
    """).lstrip())
    script.chmod(0o755)
    pool = zygote.WarmPool()
    try:
        results = {}
        for warm in (False, True):
            runner = HookRunner(RunnerConfig(hooks_dir, tmp_path / "run", warm_hooks=warm,
                                             default_timeout=10.0, grace=0.2))
            if warm:
                runner.warm = pool
            results[warm] = runner.run("before_vm_start", DOMAIN, vm_id=UUID, vm_props={})
        assert pool.spawned == 1
    finally:
        pool.close()
    assert [r.stdout for r in results[False].runs] == ["False\n"]
    assert [r.stdout for r in results[True].runs] == ["True\n"]
    assert results[True].data == results[False].data
    assert "ovirt-vm:x" in results[True].data
