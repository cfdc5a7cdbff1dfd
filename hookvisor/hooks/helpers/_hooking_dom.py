"""Faster equivalents of minidom.parseString and toxml for hooking's
read_domxml and write_domxml, in the warm executor (stdlib only).

minidom.parseString(data) and doc.toxml(encoding="utf-8") are most of what a
typical Python hook costs once the interpreter is warm. parse() builds the very
tree expatbuilder builds: the same pyexpat parser and settings, the same node
classes, every slot and __dict__ entry set as its handlers set them (node
classes, namespaces and prefixes, attribute objects and their order, text
splitting, CDATA sections, comments, processing instructions, the XML
declaration), with less work per node. toxml() makes the bytes toxml makes.
Each returns None when it cannot vouch for an identical result, and the caller
then does what it always did: for a DOCTYPE (entities, attribute defaults), for
a node or value toxml treats specially, for xml modules a hook patched, and for
a standard library other than the one this code was checked against (_KNOWN).

hooking loads this module only through hooking._warm_dom(), which the warm
executor's interpreter calls before it forks hooks: a cold hook keeps the plain
calls (compiling and checking this module would cost it about what it saves).
tests/hooks/test_fastdom.py compares both ways, tree and bytes.
"""

import os
import sys

# Digests (_digest) of the standard library code this module mirrors: the xml
# modules of CPython 3.11 (3.11.2 and 3.11.7 alike). Another Python: the plain
# calls, until its code is compared and its digest added here.
_KNOWN = frozenset({
    1888250452676450439,  # CPython 3.11.2 (Debian 3.11.2-6+deb12u6) and 3.11.7
    # Debian 3.11.2-6+deb12u8: minidom's Element and Attr __init__ set
    # ownerDocument = None and _clear_id_cache tests ownerDocument (the fix for
    # quadratic id-cache clearing); parseString's and toxml's paths are the
    # same, and _build sets every node's ownerDocument itself.
    1118698034963043709,
})
_state = None  # None: not checked yet; False: not usable; else see _check


class _Bail(Exception):
    """Not a case the fast path reproduces exactly."""


def _bail(*args):
    raise _Bail


def _modules():
    """(minidom, expatbuilder, expat) if they are the known standard library modules,
    unchanged since they were checked; else None."""
    global _state
    state = _state
    if state is None:
        state = _state = _check()
    if state is False:
        return None
    modules, names, sizes, watched = state
    for module, name in zip(modules, names, strict=True):
        if sys.modules.get(name) is not module:
            return None
    # Each namespace's size (an entry added, say a method that shadows one of a
    # base class), and what parseString and toxml look up in them (an entry
    # replaced): not a comparison of every entry, whose reference counts a warm
    # hook's process would then write, copying about 70 pages from the zygote
    # (0.2 ms, measured).
    for mapping, size in sizes:
        if len(mapping) != size:
            return None
    for owner, name, value in watched:
        if getattr(owner, name, None) is not value:
            return None
    return modules


# What minidom.parseString (with the fast path's handler set) and toxml look up at
# run time, in the namespaces _check verified: (owner, names). (theDOMImplementation's
# own entries: its __dict__'s size, empty.)
_WATCHED = (
    ("minidom", ("parseString", "_append_child", "_set_attribute_node", "_clear_id_cache",
                 "_in_document", "_write_data", "Element", "Attr", "Text", "CDATASection",
                 "Comment", "ProcessingInstruction", "Document", "NodeList", "NamedNodeMap",
                 "io", "Node")),
    ("expatbuilder", ("parseString", "ExpatBuilderNS", "theDOMImplementation", "xmlbuilder",
                      "minidom", "expat", "_parse_ns_name", "_intern", "_append_child",
                      "_set_attribute_node", "EMPTY_NAMESPACE", "EMPTY_PREFIX",
                      "XMLNS_NAMESPACE", "CDATA_SECTION_NODE", "TEXT_NODE")),
    ("xmlbuilder", ("Options",)),
    ("expat", ("ParserCreate",)),
    ("ExpatBuilderNS", ("__init__", "reset", "getParser", "createParser", "install",
                        "_initNamespaces", "parseString", "_setup_subset",
                        "start_doctype_decl_handler", "first_element_handler",
                        "start_element_handler", "end_element_handler", "_finish_start_element",
                        "_finish_end_element", "pi_handler", "comment_handler",
                        "start_cdata_section_handler", "end_cdata_section_handler",
                        "character_data_handler_cdata", "character_data_handler",
                        "external_entity_ref_handler", "xml_decl_handler",
                        "start_namespace_decl_handler", "element_decl_handler",
                        "attlist_decl_handler", "entity_decl_handler", "notation_decl_handler")),
    ("Options", ("namespaces", "namespace_declarations", "filter", "entities",
                 "cdata_sections", "comments", "whitespace_in_element_content")),
    ("DOMImplementation", ("createDocument", "_create_document")),
    ("Document", ("__init__", "writexml", "toxml", "toprettyxml", "createCDATASection",
                  "createComment", "createProcessingInstruction", "implementation",
                  "nodeType", "childNodes")),
    ("Element", ("__init__", "writexml", "_get_attributes", "_ensure_attributes", "nodeType",
                 "childNodes", "tagName", "_attrs", "_attrsNS")),
    ("Attr", ("__init__", "value", "nodeType", "childNodes", "_value")),
    ("Text", ("__init__", "writexml", "data", "nodeType", "_data")),
    ("CDATASection", ("__init__", "writexml", "data", "nodeType", "appendData")),
    ("Comment", ("__init__", "writexml", "data", "nodeType")),
    ("ProcessingInstruction", ("__init__", "writexml", "nodeType", "target", "data")),
    ("NamedNodeMap", ("__init__", "keys", "__getitem__")),
    ("NodeList", ("__init__", "__new__")),
)


def _check(stdlib_digest=None):
    """Once per process: whether the namespaces that decide what parseString and
    toxml do (the modules, and the classes of the nodes, the builder and the
    options) hold the standard library's own code, the code this module mirrors
    (_KNOWN); then copies of them, for _modules to see a later patch.

    For another Python: after comparing expatbuilder's handlers and minidom's
    writexml methods with what _build and _serialize do, add its digest, the
    number `python3 -c 'import _hooking_dom as d; x = []; d._check(x); print(x)'`
    prints (run in this directory), to _KNOWN."""
    import types
    import xml
    from xml.dom import expatbuilder, minicompat, minidom, xmlbuilder
    from xml.parsers import expat

    classes = []
    for cls in (minidom.Document, minidom.Element, minidom.Attr, minidom.Text,
                minidom.CDATASection, minidom.Comment, minidom.ProcessingInstruction,
                minidom.NamedNodeMap, minidom.DOMImplementation, minicompat.NodeList,
                expatbuilder.ExpatBuilderNS, xmlbuilder.Options):
        for c in cls.__mro__:
            if c.__module__ != "builtins" and c not in classes:
                classes.append(c)
    live = [vars(m) for m in (minidom, expatbuilder, xmlbuilder, expat)]
    live.append(vars(expatbuilder.theDOMImplementation))
    live.extend(vars(c) for c in classes)
    root = os.path.dirname(xml.__file__) + os.sep
    codes = []
    for mapping in live:
        for value in mapping.values():
            if not _genuine(value, root, codes, types):
                return False
    digest = _digest(codes)  # consumes codes
    if stdlib_digest is not None:
        stdlib_digest.append(digest)
    if digest not in _KNOWN:
        return False
    modules = (minidom, expatbuilder, expat)
    owners = {"minidom": minidom, "expatbuilder": expatbuilder, "xmlbuilder": xmlbuilder,
              "expat": expat, "ExpatBuilderNS": expatbuilder.ExpatBuilderNS,
              "Options": xmlbuilder.Options, "DOMImplementation": minidom.DOMImplementation,
              "NodeList": minicompat.NodeList}
    watched = []
    for owner, names in _WATCHED:
        thing = owners.get(owner) or getattr(minidom, owner)
        # A name one known version lacks (minidom._in_document, gone in deb12u8).
        watched.extend((thing, name, getattr(thing, name)) for name in names
                       if hasattr(thing, name))
    return (modules, [m.__name__ for m in modules], [(m, len(m)) for m in live], watched)


def _genuine(value, root, codes, types):
    """Whether a namespace's entry is the standard library's (not a hook's function,
    class or object put there); adds the code objects behind it to codes."""
    if isinstance(value, (staticmethod, classmethod, types.MethodType)):
        value = value.__func__
    if isinstance(value, property):
        return all(f is None or _genuine(f, root, codes, types)
                   for f in (value.fget, value.fset, value.fdel))
    kind = type(value)
    if kind is types.FunctionType:
        codes.append(value.__code__)
        return value.__code__.co_filename.startswith(root)
    if kind is types.BuiltinFunctionType:
        return value.__module__ == "pyexpat"
    module = (value if isinstance(value, type) else kind).__module__
    return module in ("builtins", "pyexpat") or module.startswith(("xml.", "_frozen_importlib"))


def _digest(codes):
    """A digest of code objects (bytecode, names, string and number constants, and
    the same of the code nested in them): the same for the same source on any run
    (no hash randomization)."""
    parts = []
    while codes:
        code = codes.pop()
        parts.append(code.co_code)
        words = list(code.co_names)
        for c in code.co_consts:
            kind = type(c)
            if kind is str:
                words.append(c)
            elif kind is int or kind is tuple:
                words.append(repr(c))
            elif kind is type(code):
                codes.append(c)
        parts.append("\0".join(words).encode("utf-8", "backslashreplace"))
    return int.from_bytes(b"\1".join(parts), "little") % ((1 << 61) - 1)


def parse(data):
    """minidom.parseString(data), or None to have it called."""
    modules = _modules()
    if modules is None:
        return None
    try:
        return _build(data, *modules)
    except Exception:
        return None


def _build(data, minidom, expatbuilder, expat):
    """The Document expatbuilder.ExpatBuilderNS().parseString(data) returns, built
    by handlers that do what its handlers do, without their generality (filters,
    DTD element info) and indirections; a DOCTYPE bails out (_Bail)."""
    Element = minidom.Element
    Attr = minidom.Attr
    Text = minidom.Text
    CDATASection = minidom.CDATASection
    Comment = minidom.Comment
    ProcessingInstruction = minidom.ProcessingInstruction
    NodeList = minidom.NodeList
    XMLNS = minidom.XMLNS_NAMESPACE
    new = object.__new__

    doc = expatbuilder.theDOMImplementation.createDocument(None, None, None)
    # ExpatBuilderNS's parser and settings, but attributes as a dict: the same
    # pairs in the same order (expat rejects a repeated name), built in C.
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.namespace_prefixes = True
    parser.buffer_text = True
    parser.ordered_attributes = False
    parser.specified_attributes = True
    intern = parser.intern.setdefault
    cur = doc
    decls = {}  # the next element's xmlns declarations, in order: prefix (None) -> uri
    cdata = cdata_continue = False

    # Namespaces.start_element_handler, with Element(), Attr() and Text() and
    # _append_child and _set_attribute_node inlined; the slots set as they set them.
    def start(name, attrs):
        nonlocal cur
        node = new(Element)
        if " " in name:
            parts = name.split(" ")
            if len(parts) == 3:
                uri, local, prefix = parts
                prefix = intern(prefix, prefix)
                qname = prefix + ":" + local
                qname = intern(qname, qname)
            elif len(parts) == 2:
                uri, local = parts
                prefix = None
                qname = intern(local, local)
            else:
                raise _Bail
            node.tagName = node.nodeName = qname
            node.prefix = prefix
            node.namespaceURI = intern(uri, uri)
        else:
            node.tagName = node.nodeName = name
            node.prefix = node.namespaceURI = None
        node.ownerDocument = doc
        parent = cur
        kids = parent.childNodes
        if kids:
            last = kids[-1]
            node.previousSibling = last
            last.nextSibling = node
        else:
            node.previousSibling = None
        node.nextSibling = None
        kids.append(node)
        node.parentNode = parent
        node.childNodes = NodeList()
        cur = node
        if not (attrs or decls):
            node._attrs = node._attrsNS = None
            return
        byname = node._attrs = {}
        byns = node._attrsNS = {}
        if decls:
            for prefix, uri in decls.items():
                a = new(Attr)
                if prefix:
                    qname = "xmlns:" + prefix
                    qname = intern(qname, qname)
                    a._name = qname
                    a._localName = local = prefix
                    a._prefix = "xmlns"
                else:
                    a._name = a._localName = qname = local = "xmlns"
                    a._prefix = None
                a.namespaceURI = XMLNS
                t = new(Text)
                t._data = uri
                t.ownerDocument = t.parentNode = t.previousSibling = t.nextSibling = None
                a.childNodes = NodeList((t,))
                a._value = uri
                a.ownerDocument = doc
                a.ownerElement = node
                byname[qname] = a
                byns[(XMLNS, local)] = a
            decls.clear()
        for aname, value in attrs.items():
            a = new(Attr)
            t = new(Text)
            t._data = value
            t.ownerDocument = t.parentNode = t.previousSibling = t.nextSibling = None
            a.childNodes = NodeList((t,))
            a._value = value
            a.ownerDocument = doc
            a.ownerElement = node
            if " " in aname:
                parts = aname.split(" ")
                if len(parts) == 3:
                    uri, local, prefix = parts
                    prefix = intern(prefix, prefix)
                    qname = prefix + ":" + local
                    qname = intern(qname, qname)
                    local = intern(local, local)
                elif len(parts) == 2:
                    uri, local = parts
                    prefix = None
                    qname = local = intern(local, local)
                else:
                    raise _Bail
                uri = intern(uri, uri)
                a._name = qname
                a._localName = local
                a._prefix = prefix
                a.namespaceURI = uri
                byname[qname] = a
                byns[(uri, local)] = a
            else:
                a._name = a._localName = aname
                a._prefix = a.namespaceURI = None
                byname[aname] = a
                byns[(None, aname)] = a

    def end(name):
        nonlocal cur
        cur = cur.parentNode

    # ExpatBuilder.character_data_handler_cdata.
    def characters(data):
        nonlocal cdata_continue
        parent = cur
        kids = parent.childNodes
        if cdata:
            if cdata_continue and kids[-1].nodeType == 4:  # CDATA_SECTION_NODE
                last = kids[-1]
                last._data = last._data + data
                return
            node = new(CDATASection)
            cdata_continue = True
        elif kids and kids[-1].nodeType == 3:  # TEXT_NODE
            last = kids[-1]
            last._data = last._data + data
            return
        else:
            node = new(Text)
        node._data = data
        node.ownerDocument = doc
        if kids:
            last = kids[-1]
            node.previousSibling = last
            last.nextSibling = node
        else:
            node.previousSibling = None
        node.nextSibling = None
        kids.append(node)
        node.parentNode = parent

    def start_cdata():
        nonlocal cdata, cdata_continue
        cdata = True
        cdata_continue = False

    def end_cdata():
        nonlocal cdata, cdata_continue
        cdata = cdata_continue = False

    # Comments and processing instructions: created by the Document's factory
    # methods, then _append_child (a processing instruction keeps these in its
    # __dict__: the same entries in the same order).
    def append(node):
        node.ownerDocument = doc
        parent = cur
        kids = parent.childNodes
        if kids:
            last = kids[-1]
            node.previousSibling = last
            last.nextSibling = node
        kids.append(node)
        node.parentNode = parent

    def comment(data):
        append(Comment(data))

    def pi(target, data):
        append(ProcessingInstruction(target, data))

    def xml_decl(version, encoding, standalone):
        doc.version = version
        doc.encoding = encoding
        if standalone >= 0:
            doc.standalone = bool(standalone)

    parser.StartDoctypeDeclHandler = _bail
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.ProcessingInstructionHandler = pi
    parser.CommentHandler = comment
    parser.StartCdataSectionHandler = start_cdata
    parser.EndCdataSectionHandler = end_cdata
    parser.CharacterDataHandler = characters
    parser.XmlDeclHandler = xml_decl
    parser.StartNamespaceDeclHandler = decls.__setitem__
    parser.Parse(data, True)
    return doc


def toxml(doc):
    """doc.toxml(encoding="utf-8"), or None to have it called."""
    minidom = sys.modules.get("xml.dom.minidom")
    if minidom is None or type(doc) is not minidom.Document:
        return None
    modules = _modules()
    if modules is None or modules[0] is not minidom:
        return None
    try:
        return _serialize(doc, minidom)
    except Exception:
        return None


def _serialize(doc, minidom):
    """What Document.writexml writes with no indentation, as UTF-8 with character
    references for what UTF-8 cannot encode (toxml's TextIOWrapper). Bails out
    (_Bail) where toxml raises or converts (a comment with "--", a value that
    is not a str, a node of another class...), so that toxml does that itself;
    the elements it passed got their attribute dictionaries as toxml gives them
    (Element._ensure_attributes)."""
    Element = minidom.Element
    Attr = minidom.Attr
    Text = minidom.Text
    CDATASection = minidom.CDATASection
    Comment = minidom.Comment
    ProcessingInstruction = minidom.ProcessingInstruction
    NodeList = minidom.NodeList
    out = ['<?xml version="1.0" encoding="utf-8"?>']
    put = out.append

    # Deeper than toxml's recursion could go: let it be the one to fail or not.
    frame = sys._getframe()
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    room = sys.getrecursionlimit() - depth - 16

    def write(nodes, level):
        if type(nodes) is not NodeList or level > room:
            raise _Bail
        for node in nodes:
            kind = type(node)
            if kind is Element:
                tag = node.tagName
                if type(tag) is not str:
                    raise _Bail
                put("<" + tag)
                attrs = node._attrs
                if attrs is None:
                    node._attrs = {}
                    node._attrsNS = {}
                elif type(attrs) is dict:
                    for name, attr in attrs.items():
                        if type(attr) is not Attr or type(name) is not str:
                            raise _Bail
                        value = attr._value
                        if type(value) is not str:
                            if value is not None:  # (xmlns="" parses as None)
                                raise _Bail
                            value = ""
                        if value:  # minidom._write_data
                            if "&" in value:
                                value = value.replace("&", "&amp;")
                            if "<" in value:
                                value = value.replace("<", "&lt;")
                            if '"' in value:
                                value = value.replace('"', "&quot;")
                            if ">" in value:
                                value = value.replace(">", "&gt;")
                        put(" " + name + '="' + value + '"')
                else:
                    raise _Bail
                kids = node.childNodes
                if kids:
                    put(">")
                    write(kids, level + 1)
                    put("</" + tag + ">")
                else:
                    put("/>")
            elif kind is Text:
                data = node._data
                if type(data) is not str:
                    raise _Bail
                if data:
                    if "&" in data:
                        data = data.replace("&", "&amp;")
                    if "<" in data:
                        data = data.replace("<", "&lt;")
                    if '"' in data:
                        data = data.replace('"', "&quot;")
                    if ">" in data:
                        data = data.replace(">", "&gt;")
                    put(data)
            elif kind is CDATASection:
                data = node._data
                if type(data) is not str or "]]>" in data:
                    raise _Bail
                put("<![CDATA[" + data + "]]>")
            elif kind is Comment:
                data = node._data
                if type(data) is not str or "--" in data:
                    raise _Bail
                put("<!--" + data + "-->")
            elif kind is ProcessingInstruction:
                target = node.target
                data = node.data
                if type(target) is not str or type(data) is not str:
                    raise _Bail
                put("<?" + target + " " + data + "?>")
            else:
                raise _Bail

    write(doc.childNodes, 0)
    return "".join(out).encode("utf-8", "xmlcharrefreplace")


def _sample(devices):
    """A domain XML with what libvirt's have (namespaced metadata, comments,
    character references) for warm()."""
    items = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='/var/lib/images/disk{i}.img'/><target dev='vd{i}' bus='virtio'/>"
        f"</disk>\n    " if i % 2 == 0 else
        f"<interface type='bridge'><mac address='52:54:00:00:00:{i:02x}'/>"
        f"<source bridge='br0'/><model type='virtio'/></interface>\n    "
        for i in range(devices))
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n<!-- warm -->\n"
        "<domain type='kvm' xmlns:ovirt-vm='http://ovirt.org/vm/1.0'>\n  <name>warm</name>\n"
        "  <metadata><ovirt-vm:vm><ovirt-vm:x a='&lt;&amp;&quot;'>1 &gt; 0</ovirt-vm:x>"
        "</ovirt-vm:vm></metadata>\n"
        f"  <devices>\n    {items}</devices>\n</domain>\n").encode()


def warm():
    """Whether parse() and toxml() are usable in this interpreter (the known
    standard library, and on a sample the same document and bytes as minidom's);
    run several times, so that what the interpreter builds lazily (the check,
    imports, specialized bytecode) is ready in the processes forked from here."""
    from xml.dom import minidom

    for devices in (8,) * 9 + (40,):
        data = _sample(devices)
        doc = parse(data)
        if doc is None or doc.toxml() != minidom.parseString(data).toxml():
            return False
        for node in doc.getElementsByTagName("source"):
            node.setAttribute("warm", "1")
        doc.documentElement.appendChild(doc.createElement("warm"))
        out = toxml(doc)
        if out is None or out != doc.toxml(encoding="utf-8"):
            return False
        doc.unlink()
    return True
