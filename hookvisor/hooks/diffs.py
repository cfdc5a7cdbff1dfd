"""The recorded diff of a hook's edit: cheap on big data, capped, marked when cut.

difflib on a whole 10 MB domain XML is slow and a one-line edit gave a 21 MB
diff. Here the common head and tail are skipped first (bytes compared in C,
block by block), so difflib sees only the changed middle plus context; a
middle too big for difflib is shown as one replacement hunk. The text stops at
`cap` bytes, with a last line saying so.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator

from hookvisor.hooks import canonxml

CONTEXT = 3
_BLOCK = 1 << 16
# Past this many lines in the changed middle difflib gets slow: one hunk instead.
_DIFFLIB_LINES = 4000
_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i + _BLOCK <= n and a[i:i + _BLOCK] == b[i:i + _BLOCK]:
        i += _BLOCK
    # The first difference is within a block: halve it, slices compare in C
    # (byte by byte in Python cost 1.7 ms on a 25 KB common tail).
    hi = min(i + _BLOCK, n)
    while i < hi:
        mid = (i + hi + 1) // 2
        if a[i:mid] == b[i:mid]:
            i = mid
        else:
            hi = mid - 1
    return i


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    i = 0
    la, lb = len(a), len(b)
    while i + _BLOCK <= limit and a[la - i - _BLOCK:la - i] == b[lb - i - _BLOCK:lb - i]:
        i += _BLOCK
    hi = min(i + _BLOCK, limit)
    while i < hi:
        mid = (i + hi + 1) // 2
        if a[la - mid:la - i] == b[lb - mid:lb - i]:
            i = mid
        else:
            hi = mid - 1
    return i


def _back_lines(data: bytes, pos: int, lines: int) -> int:
    """Start of the line `lines` lines before the one holding `pos`."""
    start = data.rfind(b"\n", 0, pos) + 1
    for _ in range(lines):
        if start == 0:
            break
        start = data.rfind(b"\n", 0, start - 1) + 1
    return start


def _forward_lines(data: bytes, pos: int, lines: int) -> int:
    """End (after the newline) of the line `lines` lines after the one ending at `pos`."""
    end = pos
    for _ in range(lines):
        nl = data.find(b"\n", end)
        if nl < 0:
            return len(data)
        end = nl + 1
    return end


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def _hunks(old: list[str], new: list[str], offset: int, name: str) -> Iterator[str]:
    yield f"--- before {name}\n"
    yield f"+++ after {name}\n"
    if len(old) + len(new) > _DIFFLIB_LINES:
        yield f"@@ -{offset + 1},{len(old)} +{offset + 1},{len(new)} @@\n"
        yield from ("-" + line for line in old)
        yield from ("+" + line for line in new)
        return
    body = difflib.unified_diff(old, new, n=CONTEXT)
    for line in body:
        if line.startswith(("---", "+++")):
            continue
        m = _HUNK.match(line)
        if m:
            a, b = int(m.group(1)) + offset, int(m.group(3)) + offset
            yield f"@@ -{a}{m.group(2) or ''} +{b}{m.group(4) or ''} @@\n"
        else:
            yield line


def unified(before: bytes, after: bytes, name: str, cap: int) -> str:
    """A unified diff of before -> after, at most about `cap` bytes (cut and marked)."""
    if before == after:
        return ""
    head = _common_prefix(before, after)
    tail = _common_suffix(before, after, min(len(before), len(after)) - head)
    start = _back_lines(before, head, CONTEXT)
    pos = len(before) - tail
    # A tail starting mid-line: that line is part of the change, context follows it.
    mid_line = 0 < pos < len(before) and before[pos - 1:pos] != b"\n"
    old_end = _forward_lines(before, pos, CONTEXT + mid_line)
    # The tail is the same bytes in both: end both slices as far from the end.
    new_end = len(after) - (len(before) - old_end)
    offset = before.count(b"\n", 0, start)
    old = _lines(before[start:old_end])
    new = _lines(after[start:new_end])
    out: list[str] = []
    size = 0
    for line in _hunks(old, new, offset, name):
        if not line.endswith("\n"):
            line += "\n"
        size += len(line)
        if size > cap:
            out.append(f"\\ diff cut at {cap} bytes\n")
            break
        out.append(line)
    return "".join(out)


def was_cut(diff: str) -> bool:
    return diff.endswith(" bytes\n") and "\n\\ diff cut at " in "\n" + diff[-64:]


# Past this size canonicalising costs more than the diff is worth: raw diff only.
CANONICAL_MAX = 4 * 1024 * 1024


def canonical(kind: str, data: bytes) -> bytes | None:
    """The data in a form where only real changes differ; None if it cannot be read.

    XML ("xml"): C14N 2.0 (attribute order and quoting, `<a/>` vs `<a></a>`,
    entities, the `<?xml?>` declaration and comments all normalised; whitespace
    between elements dropped), then one element per line: minidom's pretty
    print of it, made in one pass by hookvisor.hooks.canonxml. JSON ("json"):
    keys sorted, two-space indent.
    """
    if len(data) > CANONICAL_MAX:
        return None
    try:
        text = data.decode("utf-8")
        if kind == "json":
            return (json.dumps(json.loads(text), sort_keys=True, indent=2,
                               ensure_ascii=False) + "\n").encode()
        if kind != "xml":
            return None
        pretty = canonxml.fast(text)
        return None if pretty is None else pretty.encode("utf-8")
    except (ValueError, RecursionError):
        return None


class CanonicalCache:
    """The canonical forms of the two sides of a chain's last diff.

    In a chain the data before a hook is what the last hook that changed it
    left, or (its edit refused) what that hook was given: one side of the
    last diff either way, so each version is made canonical once.
    """

    def __init__(self) -> None:
        self._last: list[tuple[str, bytes, bytes | None]] = []

    def canonical(self, kind: str, data: bytes) -> bytes | None:
        for k, d, form in self._last:
            if k == kind and (d is data or d == data):
                return form
        return canonical(kind, data)

    def pair(self, kind: str, before: bytes, after: bytes) -> tuple[bytes | None, bytes | None]:
        a, b = self.canonical(kind, before), self.canonical(kind, after)
        self._last = [(kind, before, a), (kind, after, b)]
        return a, b


def for_payload(kind: str, before: bytes, after: bytes, name: str,
                cap: int, cache: CanonicalCache | None = None) -> tuple[str, str]:
    """(diff, raw diff) of a hook's edit.

    The diff is of the canonical forms when both sides can be read (only real
    changes; "" when the edit was formatting only); the raw diff, of the bytes
    as they were, is kept beside it when it says something else. Data that
    cannot be canonicalised: the raw diff is the diff, raw "". A chain passes
    its `cache`.
    """
    raw = unified(before, after, name, cap)
    a, b = (cache or CanonicalCache()).pair(kind, before, after)
    if a is None or b is None:
        return raw, ""
    diff = unified(a, b, name + " (canonical)", cap)
    return diff, ("" if diff == raw else raw)
