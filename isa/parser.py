"""Parse the text form of a program into ``isa.program`` dataclasses.

Every failure raises ``IsaError`` with line:column and what was expected: lark's syntax
errors, unknown opcodes, wrong operand kinds or attribute types, a missing or wrong file
checksum (a truncated or corrupted file), a corrupt blob, a header value outside
``isa.limits``. Nothing in the file is evaluated, and nothing is sized by it before it is
checked: the header (geometry, batch, buffer and blob types, their total size, the memory the
blobs need) is checked before any blob is decompressed, and each blob inflates to at most its
declared size.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import lark

from . import blobs, limits
from .errors import IsaError
from .opcodes import OPCODES
from .program import FORMAT_VERSION, Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType
from .verify import verify

_END = "end crc32="
_END_BYTES = _END.encode()


def _line_col(meta_or_token) -> tuple[int, int]:
    return getattr(meta_or_token, "line", 0), getattr(meta_or_token, "column", 0)


def _int(token) -> int:
    """An INT token's value; IsaError at the token for one too long to be a number."""
    try:
        return int(token)
    except ValueError:
        raise IsaError(f"number {str(token)[:20]}... has too many digits",
                       *_line_col(token)) from None


def _check_attr(op: str, key: str, value, typ: str, token) -> object:
    ok = {"int": isinstance(value, int), "float": isinstance(value, (int, float)),
          "ints": isinstance(value, list), "str": isinstance(value, str)}[typ]
    if not ok:
        raise IsaError(f"{op}: attribute {key} must be {typ}, got {value!r}", *_line_col(token))
    return float(value) if typ == "float" else tuple(value) if typ == "ints" else value


@dataclass
class _PendingBlob:
    """A blob line as declared: decoded only once the whole header is known to be sane."""

    name: lark.Token
    crc: str
    type: TensorType
    payload: str | memoryview  # base64 text (a view of the file's bytes, read in place)
    decoded: Future | None = None  # its array, when decoded ahead

    @property
    def where(self) -> str:
        return f"line {self.name.line}: blob {self.name!s}"


class _ToProgram(lark.Transformer):
    """Tree -> dataclasses, validating instructions against the opcode table and every
    header value against ``isa.limits``; ``pending``: the data section's blobs, read apart."""

    def __init__(self, pending: list[_PendingBlob] | None = None):
        super().__init__()
        self.pending = pending or []
        self.instrs: list[Instr] = []  # instructions read apart from the grammar

    def int(self, items):
        return _int(items[0])

    def float(self, items):
        return float(items[0])

    def string(self, items):
        return json.loads(items[0])

    def ints(self, items):
        return [_int(t) for t in items if t is not None]

    def kv(self, items):
        return (str(items[0]), items[1], items[0])

    def ttype(self, items):
        return TensorType(str(items[0]), tuple(_int(t) for t in items[1:] if t is not None))

    def version(self, items):
        if _int(items[0]) != FORMAT_VERSION:
            raise IsaError(f"format version {items[0]} is not supported (this build reads "
                           f"version {FORMAT_VERSION})", *_line_col(items[0]))
        return ("version", int(items[0]))

    def chip(self, items):
        fields = ChipGeometry.__dataclass_fields__
        values, tokens = {}, {}
        for key, value, tok in items:
            if key not in fields or not isinstance(value, int):
                raise IsaError(f"chip: unknown or non-integer field {key}", *_line_col(tok))
            if key in values:
                raise IsaError(f"chip: field {key} given twice", *_line_col(tok))
            values[key], tokens[key] = value, tok
        chip = ChipGeometry(**values)
        problem = limits.geometry_problem(chip)
        if problem:
            field, message = problem
            raise IsaError(f"chip: {message}", *_line_col(tokens.get(field, items[0][2])))
        return ("chip", chip)

    def batch(self, items):
        batch = _int(items[0])
        problem = limits.batch_problem(batch)
        if problem:
            raise IsaError(problem, *_line_col(items[0]))
        return ("batch", (batch, str(items[1]) == "free"))

    def port(self, items):
        kvs = {k: v for k, v, _ in items[3:]}
        unknown = set(kvs) - {"ids", "ints", "bools"}
        if unknown or len(kvs) > 1 or not isinstance(kvs.get("ids", 0), int) or \
                kvs.get("ids", 0) < 0 or kvs.get("ints", 1) != 1 or kvs.get("bools", 1) != 1:
            raise IsaError(f"port {items[1]}: the port attributes are ids=N (N >= 1: token "
                           "ids), ints=1 (integers) or bools=1 (booleans), one at most, got "
                           f"{' '.join(f'{k}={v}' for k, v in kvs.items())}",
                           *_line_col(items[0]))
        return ("port", Port(str(items[0]), json.loads(items[1]), str(items[2])[1:],
                             kvs.get("ids", 0), "ints" in kvs, "bools" in kvs))

    def buffer(self, items):
        name, ttype = items[0], items[1]
        _check_type(ttype, f"buffer {name!s}", name)
        attrs = {"offset": 0, "range": 0.0}
        for key, value, tok in items[2:]:
            if key not in attrs or not _buffer_attr_ok(key, value):
                raise IsaError(f"buffer {name!s}: bad attribute {key}={value!r}; expected "
                               f"offset=INT in 0..{limits.MAX_OFFSET} and optionally "
                               "range=FLOAT, finite and >= 0", *_line_col(tok))
            attrs[key] = value
        return ("buffer", Buffer(str(name)[1:], ttype, attrs["offset"], float(attrs["range"])))

    def instr(self, items):
        tok = items[0]
        spec = OPCODES.get(str(tok))
        if spec is None:
            raise IsaError(f"unknown opcode {tok!s}; expected one of "
                           f"{', '.join(sorted(OPCODES))}", *_line_col(tok))
        refs = [t for t in items[1:] if isinstance(t, lark.Token) and t.type in ("BUF", "BLOB")]
        kvs = [t for t in items[1:] if isinstance(t, tuple)]
        note = next((str(t)[1:].strip() for t in items[1:]
                     if isinstance(t, lark.Token) and t.type == "COMMENT"), "")
        _check_operands(spec, refs, tok)
        attrs = []
        for key, value, ktok in kvs:
            if key in {k for k, _ in attrs}:
                raise IsaError(f"{spec.mnemonic}: attribute {key} given twice", *_line_col(ktok))
            if key not in spec.attrs:
                raise IsaError(f"{spec.mnemonic}: unknown attribute {key}; expected "
                               f"{', '.join(spec.attrs) or 'none'}", *_line_col(ktok))
            attrs.append((key, _check_attr(spec.mnemonic, key, value, spec.attrs[key], ktok)))
        missing = spec.required - {k for k, _ in attrs}
        if missing:
            raise IsaError(f"{spec.mnemonic}: missing attribute(s) {', '.join(sorted(missing))}",
                           *_line_col(tok))
        return ("instr", Instr(spec.mnemonic, tuple(str(r) for r in refs), tuple(attrs), note,
                               tok.line))

    def blob(self, items):
        name, _, crc, ttype, payload = items
        _check_type(ttype, f"blob {name!s}", name)
        return ("blob", _PendingBlob(name, str(crc), ttype, str(payload)[5:]))

    def start(self, items):
        parts: dict[str, list] = {}
        for kind, value, *_ in items:
            parts.setdefault(kind, []).append(value)
        batch, free = parts["batch"][0]
        buffers, pending = parts.get("buffer", []), parts.get("blob", []) + self.pending
        _check_sizes(buffers, pending)
        return Program(chip=parts["chip"][0], batch=batch, batch_free=free,
                       ports=parts.get("port", []), buffers=buffers,
                       text=parts.get("instr", []) + self.instrs,
                       blobs=[_decode(b) for b in pending])


def _buffer_attr_ok(key: str, value) -> bool:
    """offset: an int within limits; range: a finite number >= 0."""
    if key == "offset":
        return isinstance(value, int) and 0 <= value <= limits.MAX_OFFSET
    return isinstance(value, (int, float)) and 0 <= value < float("inf")


def _check_type(ttype: TensorType, what: str, token) -> None:
    problem = limits.tensor_problem(ttype)
    if problem:
        raise IsaError(f"{what}: {problem}", *_line_col(token))


def _check_sizes(buffers: list[Buffer], pending: list[_PendingBlob]) -> None:
    """The declared total within ``limits.MAX_DECLARED_BYTES``, and the blobs within the
    memory this process may still allocate (errors name the largest blob)."""
    blob_bytes = sum(limits.tensor_bytes(b.type) for b in pending)
    total = sum(limits.tensor_bytes(b.type) for b in buffers) + blob_bytes
    largest = max(pending, key=lambda b: limits.tensor_bytes(b.type), default=None)
    where = f"; the largest is {largest.where} {largest.type}" if largest else ""
    if total > limits.MAX_DECLARED_BYTES:
        raise IsaError(f"the program declares {limits.size_text(total)} of buffers and blobs "
                       f"(at most {limits.size_text(limits.MAX_DECLARED_BYTES)}){where}")
    problem = limits.memory_problem(blob_bytes, f"decoding the program's {len(pending)} blob(s)")
    if problem:
        raise IsaError(problem + where)


def _decode(b: _PendingBlob) -> Blob:
    if b.decoded is not None:  # decoded ahead, while the header was read (``parse``)
        return Blob(str(b.name)[1:], b.decoded.result())
    return Blob(str(b.name)[1:], blobs.decode(b.payload, b.type, b.crc, b.where))


def _check_operands(spec, refs, tok) -> None:
    kinds = list(spec.operands)
    least, most = spec.arity
    if not (least <= len(refs) and (most is None or len(refs) <= most)):
        raise IsaError(f"{spec.mnemonic}: expected operands ({', '.join(kinds)}), got "
                       f"{len(refs)}", *_line_col(tok))
    for i, ref in enumerate(refs):
        kind = spec.kind(i)
        if kind == "dst" and ref.type != "BUF" or kind == "blob" and ref.type != "BLOB":
            raise IsaError(f"{spec.mnemonic}: operand {i + 1} must be a "
                           f"{'buffer %name' if kind == 'dst' else 'blob @name'}, got {ref!s}",
                           *_line_col(ref))


_PARSER: lark.Lark | None = None


def _lark() -> lark.Lark:
    global _PARSER
    if _PARSER is None:
        grammar = resources.files("isa").joinpath("grammar.lark").read_text()
        _PARSER = lark.Lark(grammar, parser="lalr", propagate_positions=False)
    return _PARSER


_DATA = "\ndata\n"  # the data section's header line
_DATA_BYTES = _DATA.encode()
# A blob line: the grammar's ``blob`` rule, read without the grammar (blobs are most of a
# file: lark would build a token per payload character class, a regex takes each line whole).
_BLOB = re.compile(rb"blob (@[A-Za-z0-9_.]+) crc32=([0-9a-f]{8}) (f32)\[([0-9,]*)\] zlib:")
# (the payload after it is not scanned here: base64 decoding validates its characters)


def _blob_lines(data: bytes, start: int, end: int, first_line: int) -> list[_PendingBlob]:
    """The blob lines of the data section data[start:end] (newline-terminated lines;
    ``first_line``: the file line of the first), each a _PendingBlob, or IsaError at the
    first line that is not one. Read in place: payloads are views of ``data``."""
    pending, n, view = [], 0, memoryview(data)
    while start < end:
        stop = data.find(b"\n", start, end)
        m = _BLOB.match(data, start, stop)
        if m is None:
            what = data[start:stop].strip().decode("utf-8", "replace")
            if what:
                raise IsaError(f"unexpected {what[:30]!r} in the data section; expected a "
                               "blob line: blob @NAME crc32=HEX f32[SHAPE] zlib:PAYLOAD",
                               first_line + n, 1)
        else:
            name = lark.Token("BLOB", m.group(1).decode(), line=first_line + n, column=6)
            dims = m.group(4).decode()
            ttype = TensorType(m.group(3).decode(),
                               tuple(_int(d) for d in dims.split(",")) if dims else ())
            _check_type(ttype, f"blob {name!s}", name)
            last = stop
            while last > m.end() and data[last - 1] in b" \t":
                last -= 1
            pending.append(_PendingBlob(name, m.group(2).decode(), ttype, view[m.end():last]))
        start, n = stop + 1, n + 1
    return pending


_TEXT = "\ntext\n"  # the text section's header line
# One instruction line, as the grammar's ``instr`` rule reads it: opcode, references, key=value
# attributes, a comment. Lines this does not take whole go to the grammar, for its message.
_OPNAME = re.compile(r"[ \t]*([a-z][a-z0-9_]*)")
_PIECE = re.compile(r"[ \t]*(?:([%@][A-Za-z0-9_.]+)|(,)|([a-z][a-z0-9_]*)=(\"(?:[^\"\\\n]|"
                    r"\\.)*\"|\[[0-9,\- ]*\]|[^\s#\[\"]+)|(#.*))")
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?([0-9]+\.[0-9]*([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|inf)|nan")


def _value(text: str):
    """An attribute value as the grammar's ``value`` rule gives it, or None."""
    if text[0] == '"':
        return json.loads(text)
    if text[0] == "[":
        inner = text[1:-1].replace(" ", "")
        parts = inner.split(",") if inner else []
        return [_int(p) for p in parts] if all(_INT.fullmatch(p) for p in parts) else None
    if _INT.fullmatch(text):
        return _int(text)
    return float(text) if _FLOAT.fullmatch(text) else None


class _Token(lark.Token):
    """A lark.Token made without lark's constructor (about 4x faster), for the line reader:
    the transformer reads only its text, type, line and column."""


def _token(kind: str, text: str, line: int, column: int = 0) -> lark.Token:
    tok = str.__new__(_Token, text)
    tok.type, tok.value, tok.line, tok.column = kind, text, line, column
    return tok


def _instr_items(line: str, number: int) -> list | None:
    """The items the grammar would hand ``_ToProgram.instr`` for ``line``, or None when the
    line is not one instruction as this reader takes them."""
    m = _OPNAME.match(line)
    if m is None:
        return None
    items = [_token("OPNAME", m.group(1), number, 1)]
    pos, refs_done = m.end(), False
    while pos < len(line):
        p = _PIECE.match(line, pos)
        if p is None or p.end() == pos:
            return None if line[pos:].strip() else items
        ref, _, key, value, comment = p.groups()
        if ref is not None and not refs_done:
            items.append(_token("BUF" if ref[0] == "%" else "BLOB", ref, number, p.start(1) + 1))
        elif key is not None:
            refs_done, parsed = True, _value(value)
            if parsed is None:
                return None
            items.append((key, parsed, _token("KEY", key, number, p.start(3) + 1)))
        elif comment is not None:
            items.append(_token("COMMENT", comment, number))
        elif ref is not None:
            return None
        pos = p.end()
    return items


_N = r"(-?[0-9]{1,18})"  # an int attribute (the grammar's INT, short enough to be one)
_PAIR = rf"\[{_N},{_N}\]"
_NAME = r"[A-Za-z0-9_.]+"
# The printer's lines of the opcodes that fill big programs (a write and an mvm per tile),
# read by one regex each: operands, then exactly these int and [int,int] attributes.
_CANONICAL = {
    "mvm": (re.compile(rf"[ \t]*mvm (%{_NAME}), (%{_NAME}) xb={_N} rows={_PAIR} cols={_PAIR} "
                       rf"vecs={_PAIR}[ \t]*(?:#(.*))?"), ("xb", "rows", "cols", "vecs")),
    "write": (re.compile(rf"[ \t]*write (@{_NAME}) xb={_N} rows={_PAIR} cols={_PAIR}"
                         rf"[ \t]*(?:#(.*))?"), ("xb", "rows", "cols")),
}


def _canonical_instr(line: str, number: int) -> Instr | None:
    """The instruction of a line in the printer's form of a write or an mvm, as
    ``_ToProgram.instr`` would make it (the regex admits only operands of the right kinds
    and exactly the required attributes, with int values), else None."""
    body = line.lstrip(" \t")
    op = "mvm" if body.startswith("mvm ") else "write" if body.startswith("write ") else None
    if op is None:
        return None
    pattern, keys = _CANONICAL[op]
    m = pattern.fullmatch(line)
    if m is None:
        return None
    groups = m.groups()
    refs = len(OPCODES[op].operands)
    values = [int(g) for g in groups[refs:-1]]
    attrs = ((keys[0], values[0]),) + tuple(
        (key, (values[i], values[i + 1])) for key, i in zip(keys[1:], range(1, len(values), 2)))
    return Instr(op, groups[:refs], attrs, (groups[-1] or "").strip(), number)


def _fast_text(head: str, transformer: _ToProgram) -> tuple[str, list[Instr]] | None:
    """The head without its instruction lines, and those instructions, when every line reads
    (``_instr_items``); None otherwise (the grammar then reads the whole head)."""
    start, end = head.find(_TEXT), head.rfind(_DATA)
    if start < 0 or end < start:
        return None
    first = head.count("\n", 0, start + len(_TEXT)) + 1
    instrs = []
    for n, line in enumerate(head[start + len(_TEXT):end + 1].split("\n")[:-1]):
        if not line.strip():
            continue
        instr = _canonical_instr(line, first + n)
        if instr is None:
            items = _instr_items(line, first + n)
            if items is None:
                return None
            instr = transformer.instr(items)[1]
        instrs.append(instr)
    return head[:start + len(_TEXT)] + head[end + 1:], instrs


class NotText(IsaError):
    """The bytes are not UTF-8 text (``load`` names the file)."""

    def __init__(self):
        super().__init__("not a .cim program (not UTF-8 text)")


def parse(text: str | bytes, check_sum: bool = True) -> Program:
    """Parse a whole ``.cim`` program, text or its UTF-8 bytes. With ``check_sum`` the file
    checksum must match. The header goes through the grammar; instruction lines are read
    one by one (``_instr_items``, the grammar reads them instead when one is malformed, for
    its message); the data section's blob lines are read line by line (``_BLOB``), in place
    in the bytes, and decoded straight into arrays."""
    data = _lf_bytes(text)
    # the head (header and instructions) as text first: bytes that are not text say so
    # before anything else
    section = data.find(_DATA_BYTES)
    head = _text_head(data, section + len(_DATA) if section >= 0 else len(data))
    with ThreadPoolExecutor(2) as pool:
        if check_sum:  # the checksum is computed while the rest is read, checked first
            end = _body_end(data)
            crc = pool.submit(_body_crc, data, end)
        else:
            cut, crc = data.rfind(b"\n" + _END_BYTES), None
            data, end = (data + b"\n", len(data) + 1) if cut < 0 else (data, cut + 1)
        try:
            program = _parse_body(data, end, pool, section, head)
        except IsaError:
            _check_crc(data, end, crc)
            raise
        _check_crc(data, end, crc)
    verify(program)
    return program



def _lf_bytes(text: str | bytes) -> bytes:
    """The program's UTF-8 bytes with newlines as text mode reads them (CRLF and CR as LF):
    a file's bytes as they are when they hold no CR (the printer writes none), so that a
    large program is not copied."""
    if isinstance(text, str):
        return text.encode("utf-8")
    if text.find(b"\r") < 0:
        return text
    try:
        return text.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    except UnicodeDecodeError:
        raise NotText() from None


def _text_head(data: bytes, start: int) -> str:
    """data[:start], the header and instructions, as text (the data section, base64 after
    ASCII names, is checked as it is decoded); NotText if it is not UTF-8."""
    try:
        return data[:start].decode("utf-8")
    except UnicodeDecodeError:
        raise NotText() from None


# The body (what the checksum covers, everything before the ``end crc32=`` line) is
# data[:end], read in place: a 138 MB program is not copied for it (a copy costs ~0.1 s).
def _body_end(data: bytes) -> int:
    """Where the bytes the trailing ``end crc32=`` line covers end (IsaError if it has
    none)."""
    cut = data.rfind(b"\n" + _END_BYTES)
    if cut < 0:
        raise IsaError("truncated program: the final 'end crc32=...' line is missing")
    return cut + 1


def _body_crc(data: bytes, end: int) -> str:
    """The CRC-32 of data[:end] (zlib releases the GIL while it sums)."""
    return f"{zlib.crc32(memoryview(data)[:end]):08x}"


def _check_crc(data: bytes, end: int, crc: Future | None) -> None:
    if crc is not None and data[end + len(_END_BYTES):].strip() != crc.result().encode():
        line = data.count(b"\n", 0, end) + 1
        raise IsaError(f"file checksum mismatch at line {line}: "
                       "the program is corrupted or was edited (recompile it)")


def _decode_ahead(pending: list[_PendingBlob], pool: ThreadPoolExecutor) -> None:
    """Start decoding the blobs on ``pool`` (zlib works without the GIL) when their declared
    sizes are within limits; ``_ToProgram`` checks everything again, in order, and takes
    the results (or their errors) only after the header is read."""
    try:
        _check_sizes([], pending)
    except IsaError:  # raised again, in its turn, when the header's buffers are known
        return
    for b in pending:
        b.decoded = pool.submit(blobs.decode, b.payload, b.type, b.crc, b.where)


def _parse_body(data: bytes, end: int, pool: ThreadPoolExecutor, section: int,
                head: str) -> Program:
    """The program in the body data[:end] (which ends with a newline); ``section``: where
    the file's first data-section line is (-1: none), ``head``: the text up to its end."""
    if 0 <= section and section + len(_DATA) <= end:
        start = section + len(_DATA)  # the data section: data[start:end]
    else:  # none in the body: all of it is the head
        start, head = end, _text_head(data, end)
    try:
        pending = _blob_lines(data, start, end, head.count("\n") + 1)
        _decode_ahead(pending, pool)
        transformer = _ToProgram(pending)
        fast = _fast_text(head, transformer)
        if fast is not None:
            transformer.instrs = fast[1]
            head = fast[0]
        tree = _lark().parse(head)
        program = transformer.transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, IsaError):
            raise exc.orig_exc from None
        raise IsaError(f"malformed program ({exc.orig_exc})") from None
    except lark.exceptions.UnexpectedInput as exc:
        expected = sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or [])
        got = getattr(exc, "token", None) or getattr(exc, "char", "")
        raise IsaError(f"unexpected {str(got)[:30]!r}; expected one of: "
                       f"{', '.join(expected)[:200]}", exc.line, exc.column) from None
    return program


def _check_file_size(path) -> None:
    """A file larger than ``limits.MAX_FILE_BYTES`` or than reading it needs memory for is an
    error before it is read."""
    size = os.path.getsize(path)
    if size > limits.MAX_FILE_BYTES:
        raise IsaError(f"{path}: {limits.size_text(size)} is larger than any program "
                       f"({limits.size_text(limits.MAX_FILE_BYTES)} at most)")
    problem = limits.memory_problem(limits.READ_FACTOR * size, f"reading {path}")
    if problem:
        raise IsaError(problem)


def load(path) -> Program:
    """Read and parse a ``.cim`` file (its size checked first), as bytes: the data section
    is decoded from them in place (``parse``)."""
    try:
        _check_file_size(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise IsaError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return parse(data)
    except IsaError as exc:  # (NotText too) the message names the file the user gave
        raise IsaError(f"{path}: {exc}") from None
