"""Comparing hooking's fast read_domxml/write_domxml (helpers/_hooking_dom.py) with
minidom.parseString and toxml: a full structural dump of a minidom tree, XML
documents rendered from specs (with every syntax variant the tests want), DOM
edits described as data (applied alike to two documents), and a check of a
seeded random corpus.

Stdlib only: test_fastdom.py imports it (its hypothesis strategies build the
same specs), and runs it as a script under the interpreter hooks use
(HOOK_PYTHON), `python3 domcheck.py HELPERS_DIR COUNT SEED`, which prints
"ok <fast> <fallback>" or fails.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from typing import Any

# --- the dump ----------------------------------------------------------------------


def dump(doc: Any) -> list[Any]:
    """Every node reachable from doc (children, attributes and their text nodes,
    siblings, owners...), in the order first met, each as its class and every slot
    (along its MRO, "<unset>" when unset) and __dict__ entry (in order), other
    nodes referred to by their number: equal dumps, indistinguishable trees."""
    from xml.dom import expatbuilder, minidom

    numbers: dict[int, int] = {}
    queue: list[Any] = []

    def ref(node: Any) -> tuple[str, int]:
        key = id(node)
        if key not in numbers:
            numbers[key] = len(queue)
            queue.append(node)
        return ("node", numbers[key])

    def enc(value: Any) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, float, str):
            return (kind.__name__, value)
        if kind is minidom.DOMImplementation:
            return ("DOMImplementation", value is expatbuilder.theDOMImplementation)
        if isinstance(value, (list, tuple)):  # NodeList, EmptyNodeList too
            return (f"{kind.__module__}.{kind.__qualname__}", [enc(v) for v in value])
        if isinstance(value, dict):
            return (f"{kind.__module__}.{kind.__qualname__}",
                    [(enc(k), enc(v)) for k, v in value.items()])
        if kind.__module__.startswith("xml."):  # nodes, maps, DTD information...
            return ref(value)
        return ("other", f"{kind.__module__}.{kind.__qualname__}")

    def record(node: Any) -> list[Any]:
        kind = type(node)
        out: list[Any] = [f"{kind.__module__}.{kind.__qualname__}"]
        for cls in kind.__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name in ("__dict__", "__weakref__"):
                    continue
                try:
                    value = object.__getattribute__(node, name)
                except AttributeError:
                    out.append((cls.__qualname__, name, "<unset>"))
                else:
                    out.append((cls.__qualname__, name, enc(value)))
        if hasattr(node, "__dict__"):
            out.append(("__dict__", [(k, enc(v)) for k, v in vars(node).items()]))
        return out

    ref(doc)
    result = []
    i = 0
    while i < len(queue):
        result.append(record(queue[i]))
        i += 1
    return result


# --- documents from specs ----------------------------------------------------------
#
# A spec is plain data (so that hypothesis can build and shrink it):
#   doc:   {"bom": bool, "decl": None | (quote, encoding | None, standalone | None, space),
#           "prolog": [misc], "doctype": None | str, "root": element, "epilog": [misc],
#           "crlf": bool}
#   element: ("el", name, [(attr name, [piece], quote)], [xmlns (prefix | "", uri)],
#             [child], empty_tag)
#   child:  element | ("text", [piece]) | ("cdata", str) | ("comment", str)
#           | ("pi", target, str)
#   misc:   ("comment", str) | ("pi", target, str) | ("space", str)
#   piece:  ("t", str) escaped as needed | ("ref", "&...;") as is

ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}


def _escape(text: str, quote: str | None, style: int) -> str:
    out = []
    for ch in text:
        if ch == "&" or ch == "<" or (quote and ch == quote) or (ch == ">" and style % 3 == 0):
            out.append(ENTITY[ch] if style % 2 == 0 else f"&#{ord(ch)};")
        elif quote and ch in "\t\n\r" and style % 5 == 0:
            out.append(f"&#x{ord(ch):x};")
        else:
            out.append(ch)
    return "".join(out)


def _pieces(pieces: list[tuple[str, str]], quote: str | None) -> str:
    return "".join(_escape(p, quote, len(p)) if kind == "t" else p for kind, p in pieces)


def _misc(item: tuple[Any, ...]) -> str:
    if item[0] == "comment":
        return f"<!--{item[1]}-->"
    if item[0] == "pi":
        return f"<?{item[1]}{' ' + item[2] if item[2] else ''}?>"
    return str(item[1])


def _element(el: tuple[Any, ...]) -> str:
    _, name, attrs, xmlns, children, empty_tag = el
    head = [name]
    for prefix, uri in xmlns:
        head.append(f"xmlns{':' + prefix if prefix else ''}=\"{_escape(uri, chr(34), 0)}\"")
    for aname, pieces, quote in attrs:
        head.append(f"{aname}={quote}{_pieces(pieces, quote)}{quote}")
    start = "<" + " ".join(head)
    if not children and empty_tag:
        return start + "/>"
    body = []
    for child in children:
        kind = child[0]
        if kind == "el":
            body.append(_element(child))
        elif kind == "text":
            body.append(_pieces(child[1], None))
        elif kind == "cdata":
            body.append(f"<![CDATA[{child[1]}]]>")
        else:
            body.append(_misc(child))
    return start + ">" + "".join(body) + f"</{name}>"


def render(spec: dict[str, Any]) -> bytes:
    """The document's bytes, in the encoding its declaration names (UTF-8 without
    one, and also when the named one cannot hold the text: the declaration then
    says so)."""
    rest = "".join(_misc(m) for m in spec["prolog"])
    if spec["doctype"]:
        rest += spec["doctype"]
    rest += _element(spec["root"]) + "".join(_misc(m) for m in spec["epilog"])
    if spec["crlf"]:
        rest = rest.replace("\n", "\r\n")
    decl = spec["decl"]
    if decl is None:
        return (b"\xef\xbb\xbf" if spec["bom"] else b"") + rest.encode("utf-8")
    quote, encoding, standalone, space = decl
    try:
        rest.encode(encoding or "utf-8")
    except UnicodeEncodeError:
        encoding = "utf-8"
    head = f"<?xml{space}version={quote}1.0{quote}"
    if encoding is not None:
        head += f"{space}encoding={quote}{encoding}{quote}"
    if standalone is not None:
        head += f"{space}standalone={quote}{standalone}{quote}"
    head += "?>" + ("\n" if len(space) > 1 else "")
    data = (head + rest).encode(encoding or "utf-8")
    if spec["bom"] and (encoding or "utf-8").lower() == "utf-8":
        data = b"\xef\xbb\xbf" + data
    return data


NAMES = ["a", "b", "domain", "disk", "x-y", "_u", "é", "n.1", "ovirt-vm:vm", "p:a", "p:b",
         "q:a", "xml:lang", "xmlns:p", "c"]
URIS = ["http://ovirt.org/vm/1.0", "urn:p", "urn:q", "", "http://a/b?c=d&e", "urn:p"]
TEXTS = ["", "x", " ", "\n", "\t", "a&b", "<", ">", '"', "'", "]]>", "é ü", "日本", "\r\n",
         "1 > 0", "--", "-", "\u20ac", "\U0001f600", "a\tb\nc"]
REFS = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#x9;", "&#13;", "&#233;",
        "&#x1F600;"]
ENCODINGS = ["utf-8", "UTF-8", "utf-8", "us-ascii", "iso-8859-1", "utf-16", "windows-1252"]
DOCTYPES = ["<!DOCTYPE domain>", "<!DOCTYPE domain [<!ENTITY e 'v'>]>",
            "<!DOCTYPE domain SYSTEM 'x.dtd'>",
            "<!DOCTYPE domain [<!ATTLIST disk type CDATA 'file'>]>"]


def random_spec(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    def text() -> str:
        return "".join(rng.choice(TEXTS) for _ in range(rng.randrange(3)))

    def pieces() -> list[tuple[str, str]]:
        return [("ref", rng.choice(REFS)) if rng.random() < 0.2 else ("t", text())
                for _ in range(rng.randrange(3))]

    def element(level: int) -> tuple[Any, ...]:
        name = rng.choice(NAMES[:9]) if rng.random() < 0.8 else rng.choice(NAMES)
        xmlns = []
        odds = 0.6 if level == 0 else 0.15
        if rng.random() < odds / 2:
            xmlns.append(("", rng.choice(URIS)))
        for prefix in ("p", "q", "ovirt-vm"):
            if rng.random() < odds:
                xmlns.append((prefix, rng.choice(URIS[:3])))
        names = rng.sample(NAMES, rng.randrange(4))
        attrs = [(n, pieces(), rng.choice("'\"")) for n in names if n != name]
        children: list[Any] = []
        for _ in range(rng.randrange(5) if level < 4 else 0):
            r = rng.random()
            if r < 0.4:
                children.append(element(level + 1))
            elif r < 0.7:
                children.append(("text", pieces()))
            elif r < 0.8:
                children.append(("cdata", text().replace("]]>", "")))
            elif r < 0.9:
                children.append(("comment", text().replace("--", "").rstrip("-")))
            else:
                children.append(("pi", rng.choice(["pi", "x-y", "a"]), text().replace("?>", "")))
        return ("el", name, attrs, xmlns, children, rng.random() < 0.5)

    def misc() -> list[tuple[Any, ...]]:
        return [rng.choice([("comment", " c "), ("pi", "pi", "d"), ("space", "\n  ")])
                for _ in range(rng.randrange(3))]

    decl = None
    if rng.random() < 0.7:
        decl = (rng.choice("'\""), rng.choice([None, *ENCODINGS]),
                rng.choice([None, "yes", "no"]), rng.choice([" ", "  ", "\n"]))
    doctype = rng.choice(DOCTYPES) if rng.random() < 0.1 else None
    return {"bom": rng.random() < 0.1, "decl": decl, "prolog": misc(), "doctype": doctype,
            "root": element(0), "epilog": misc(), "crlf": rng.random() < 0.1}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Often a document that is no longer well-formed."""
    if not data:
        return data
    i = rng.randrange(len(data))
    op = rng.randrange(4)
    if op == 0:
        return data[:i] + data[i + 1:]
    if op == 1:
        return data[:i] + rng.choice([b"<", b"&", b"]]>", b"\xff", b"\x00", b"&e;"]) + data[i:]
    if op == 2:
        return data[:i]
    return data + rng.choice([b"<a/>", b"x", b"<!-- -->"])


# --- edits ---------------------------------------------------------------------------
#
# An edit is (op, target, *args); target picks an element (modulo their number, in
# document order) of the document as it is when the edit is applied.

def apply(doc: Any, edits: list[tuple[Any, ...]]) -> None:
    from xml.dom import minidom

    class Sub(minidom.Element):
        pass

    for op, target, *args in edits:
        elements = doc.getElementsByTagName("*")
        el = elements[target % len(elements)] if elements else doc.documentElement
        if op == "set":
            el.setAttribute(args[0], args[1])
        elif op == "setns":
            el.setAttributeNS(args[0], args[1], args[2])
        elif op == "remove":
            if el.attributes.length:
                el.removeAttribute(el.attributes.item(args[0] % el.attributes.length).name)
        elif op == "element":
            el.appendChild(doc.createElement(args[0]))
        elif op == "elementns":
            el.appendChild(doc.createElementNS(args[0], args[1]))
        elif op == "text":
            el.appendChild(doc.createTextNode(args[0]))
        elif op == "comment":
            el.appendChild(doc.createComment(args[0]))
        elif op == "cdata":
            el.appendChild(doc.createCDATASection(args[0]))
        elif op == "pi":
            el.appendChild(doc.createProcessingInstruction(args[0], args[1]))
        elif op == "top":
            doc.insertBefore(doc.createComment(args[0]) if args[1] else
                             doc.createProcessingInstruction("t", args[0]), doc.documentElement)
        elif op == "drop":
            if el.childNodes:
                el.removeChild(el.childNodes[args[0] % len(el.childNodes)])
        elif op == "move":
            if el.parentNode is not None and el.parentNode.nodeType == el.ELEMENT_NODE:
                el.parentNode.insertBefore(el, el.parentNode.firstChild)
        elif op == "data":
            for child in el.childNodes:
                if child.nodeType in (child.TEXT_NODE, child.COMMENT_NODE,
                                      child.CDATA_SECTION_NODE):
                    child.data = args[0]
        elif op == "normalize":
            el.normalize()
        elif op == "clone":
            el.appendChild(el.cloneNode(True)) if el.parentNode is not doc else None
        elif op == "rename":
            doc.renameNode(el, args[0], args[1])
        elif op == "value":  # not a str: toxml's own errors or conversions
            el.setAttribute("v", args[0])
        elif op == "plainlist":
            el.childNodes = list(el.childNodes)
        elif op == "subclass":
            el.appendChild(Sub("sub"))
        elif op == "unvalued":
            el.setAttributeNode(minidom.Attr("novalue"))
        elif op == "unlink":
            el.unlink()


def random_edits(rng: random.Random) -> list[tuple[Any, ...]]:
    def text() -> str:
        return "".join(rng.choice([*TEXTS, "\ud800", "\x00"]) for _ in range(rng.randrange(3)))

    plain = [
        lambda: ("set", rng.randrange(9), rng.choice(["bench", "x", "p:a", "type"]), text()),
        lambda: ("setns", rng.randrange(9), rng.choice(URIS[:3]), rng.choice(["p:z", "z"]),
                 text()),
        lambda: ("remove", rng.randrange(9), rng.randrange(4)),
        lambda: ("element", rng.randrange(9), rng.choice(NAMES)),
        lambda: ("elementns", rng.randrange(9), rng.choice(URIS[:3]), "p:new"),
        lambda: ("text", rng.randrange(9), text()),
        lambda: ("comment", rng.randrange(9), text()),
        lambda: ("cdata", rng.randrange(9), text()),
        lambda: ("pi", rng.randrange(9), "t", text()),
        lambda: ("top", 0, text(), rng.random() < 0.5),
        lambda: ("drop", rng.randrange(9), rng.randrange(4)),
        lambda: ("move", rng.randrange(9)),
        lambda: ("data", rng.randrange(9), text()),
        lambda: ("normalize", rng.randrange(9)),
        lambda: ("clone", rng.randrange(9)),
        lambda: ("rename", rng.randrange(9), rng.choice([None, "urn:p"]), "renamed"),
    ]
    odd = [
        lambda: ("value", rng.randrange(9), rng.choice([5, None, 0, 1.5])),
        lambda: ("plainlist", rng.randrange(9)),
        lambda: ("subclass", rng.randrange(9)),
        lambda: ("unvalued", rng.randrange(9)),
        lambda: ("unlink", rng.randrange(9)),
    ]
    return [rng.choice(odd if rng.random() < 0.1 else plain)() for _ in range(rng.randrange(6))]


# --- comparing, through hooking's own functions ------------------------------------------


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("value", call())
    except Exception as e:
        return ("error", (type(e), str(e)))


def compare_read(hooking: Any, path: str, data: bytes) -> bool:
    """read_domxml (fast path on) and minidom.parseString agree on data: the same
    tree, or the same error. Whether the fast path built it."""
    from xml.dom import minidom

    with open(path, "wb") as f:
        f.write(data)
    fast = outcome(hooking.read_domxml)
    slow = outcome(lambda: minidom.parseString(data))
    assert fast[0] == slow[0], (data, fast, slow)
    if fast[0] == "error":
        assert fast[1] == slow[1], (data, fast, slow)
        return False
    assert dump(fast[1]) == dump(slow[1]), data
    return hooking._fast_dom.parse(data) is not None


def plain_write_domxml(domxml: Any) -> None:
    """hooking.write_domxml as it was: toxml called from as deep in the stack (a
    RecursionError there leaves the document as write_domxml's would)."""
    with open(os.environ["_hook_domxml"], "wb") as f:  # noqa: SIM112
        f.write(domxml.toxml(encoding="utf-8"))


def compare_write(hooking: Any, path: str, data: bytes, edits: list[tuple[Any, ...]]) -> bool:
    """write_domxml (fast path on) and toxml agree after edits: the same bytes in
    the file (or the same error, and the same truncated file), and the same
    documents afterwards. Whether the fast path wrote it."""
    from xml.dom import minidom

    docs = [minidom.parseString(data) for _ in range(3)]
    # (An edit's error names its document: compare their kinds.)
    applied = [outcome(lambda d=d: apply(d, edits)) for d in docs]  # type: ignore[misc]
    kinds = [(a[0], a[1][0] if a[0] == "error" else None) for a in applied]
    assert kinds[0] == kinds[1] == kinds[2], (data, edits, applied)
    files = []
    for write, doc in ((hooking.write_domxml, docs[0]), (plain_write_domxml, docs[1])):
        with open(path, "wb") as f:
            f.write(b"before")
        result = outcome(lambda w=write, d=doc: w(d))  # type: ignore[misc]
        with open(path, "rb") as f:
            files.append((result, f.read()))
    assert files[0] == files[1], (data, edits, files)
    assert dump(docs[0]) == dump(docs[1]), (data, edits)
    return hooking._fast_dom.toxml(docs[2]) is not None


def load_hooking(helpers: str) -> Any:
    sys.path.insert(0, helpers)
    import hooking

    assert hooking._warm_dom(), "the fast path is not usable here"
    return hooking


def main() -> None:
    helpers, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hooking = load_hooking(helpers)
    rng = random.Random(seed)
    fast = fallback = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.environ["_hook_domxml"] = os.path.join(tmp, "domain.xml")  # noqa: SIM112
        for _ in range(count):
            data = render(random_spec(rng))
            if rng.random() < 0.2:
                data = mutate(data, rng)
            built = compare_read(hooking, path, data)
            fast += built
            fallback += not built
            try:
                from xml.dom import minidom

                minidom.parseString(data)
            except Exception:
                continue
            wrote = compare_write(hooking, path, data, random_edits(rng))
            fast += wrote
            fallback += not wrote
    print("ok", fast, fallback)


if __name__ == "__main__":
    main()
