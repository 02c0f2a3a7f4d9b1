"""Protobuf's text format, read without a schema (what Triton's ``config.pbtxt`` is written in); no I/O.

:func:`parse` returns a :class:`Message`: a dict of field name -> the list of its values (a field given
several times, or as a list, has several), each value an int, a float, True or False, an :class:`Identifier`
(an enum value such as ``TYPE_FP32``), a string, or a nested :class:`Message`, with the line each was read
from. Every error is a :class:`ConfigError` that names the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from inference_worker.config_errors import ConfigError

__all__ = ["Identifier", "Message", "parse"]


class Identifier(str):
    """A bare word of the text format (an enum value, ``TYPE_FP32``), as opposed to a quoted string."""

    __slots__ = ()


class Message(dict[str, list[Any]]):
    """One message: field name -> its values in order. ``line`` is where it begins, ``at`` where each field is
    first named, ``lines`` where each of its values is (a list's values may span lines)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.at: dict[str, int] = {}
        self.lines: dict[str, list[int]] = {}

    def named(self, field: str, line: int) -> list[Any]:
        """Return ``field``'s values, creating the field (given as an empty list, say) if new."""
        self.at.setdefault(field, line)
        self.lines.setdefault(field, [])
        return self.setdefault(field, [])

    def add(self, field: str, value: Any, line: int) -> None:
        self.named(field, line).append(value)
        self.lines[field].append(line)


# -- the text format ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+|\#[^\n]*)
    | (?P<newline>\n)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<quote>["'])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[{}\[\]<>:,;-])
    """,
    re.VERBOSE,
)
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_CLOSE = {"{": "}", "<": ">"}
_EOF = ("eof", "", 0)
MAX_DEPTH = 32  # messages within messages (Triton's config nests four deep): deeper is no config
MAX_NUMBER = 40  # characters of a number: int64 takes 19 digits (int() refuses 4,300: a ValueError)

Token = tuple[str, str, int]  # kind, text, line


def parse(text: str, path: str | Path = "config.pbtxt") -> Message:
    """Read protobuf text format into a :class:`Message`; ``path`` names the file in errors."""
    return _Parser(text, str(path)).document()


def _tokens(text: str, path: str) -> list[Token]:
    tokens: list[Token] = []
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(f"{path}:{line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind == "quote":
            raise ConfigError(
                f"{path}:{line}: a string that does not end on its line (a closing {text[pos]})"
            )
        if kind == "newline":
            line += 1
        elif kind == "number" and len(match.group()) > MAX_NUMBER:
            raise ConfigError(
                f"{path}:{line}: a number of {len(match.group())} characters: too large for a config"
            )
        elif kind != "space":
            tokens.append((kind, match.group(), line))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.tokens = _tokens(text, path)
        self.last_line = self.tokens[-1][2] if self.tokens else 1
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "", self.last_line)

    def take(self) -> Token:
        token = self.peek()
        self.i += 1
        return token

    def accept(self, punct: str) -> bool:
        kind, text, _ = self.peek()
        if kind == "punct" and text == punct:
            self.i += 1
            return True
        return False

    def error(self, expected: str, token: Token | None = None) -> ConfigError:
        kind, text, line = token or self.peek()
        found = {"eof": "the end of the file", "string": f"the string {text}"}.get(kind, repr(text))
        return ConfigError(f"{self.path}:{line}: expected {expected}, found {found}")

    def document(self) -> Message:
        return self.fields(Message(1), None, "")

    def fields(self, message: Message, close: str | None, opened: str) -> Message:
        """Read fields into ``message`` up to ``close`` (None: the end of the file)."""
        while True:
            kind, text, line = self.peek()
            if kind == "eof":
                if close is None:
                    return message
                raise self.error(f"'{close}' to close {opened}")
            if close is not None and kind == "punct" and text == close:
                self.i += 1
                return message
            if kind != "word":
                raise self.error("a field name" if close is None else f"a field name or '{close}'")
            self.i += 1
            colon = self.accept(":")
            kind, value, _ = self.peek()
            if kind == "punct" and value in _CLOSE:
                message.add(text, self.message(text), line)
            elif kind == "punct" and value == "[":
                self.values(message, text, line)
            elif not colon:
                raise self.error(f"':' or '{{' after field name '{text}'")
            else:
                message.add(text, self.scalar(), line)
            if not self.accept(","):
                self.accept(";")

    def message(self, field: str) -> Message:
        _, opener, line = self.take()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"{self.path}:{line}: messages nested more than {MAX_DEPTH} deep")
        message = self.fields(Message(line), _CLOSE[opener], f"'{field}' (opened at line {line})")
        self.depth -= 1
        return message

    def values(self, message: Message, field: str, line: int) -> None:
        """Read ``[v, v, ...]`` (scalars or messages) as values of ``field``."""
        self.take()
        message.named(field, line)
        if self.accept("]"):
            return
        while True:
            kind, text, at = self.peek()
            if kind == "punct" and text in _CLOSE:
                message.add(field, self.message(field), at)
            else:
                message.add(field, self.scalar(), at)
            if self.accept("]"):
                return
            if not self.accept(","):
                raise self.error(f"',' or ']' in the list of '{field}'")

    def scalar(self) -> Any:
        kind, text, line = token = self.take()
        if kind == "punct" and text == "-":
            kind, text, _ = token = self.take()
            if kind == "number":
                return -_number(text)
            if kind == "word" and text.lower() in ("inf", "infinity", "nan"):
                return -float(text)
            raise self.error("a number after '-'", token)
        if kind == "number":
            return _number(text)
        if kind == "string":
            parts = [self.unquote(text, line)]
            while self.peek()[0] == "string":  # adjacent strings are one: "ab" "cd" is "abcd"
                _, text, line = self.take()
                parts.append(self.unquote(text, line))
            return "".join(parts)
        if kind == "word":
            return {"true": True, "True": True, "false": False, "False": False}.get(text, Identifier(text))
        raise self.error("a value (a number, a string, true, false or a name)", token)

    def unquote(self, token: str, line: int) -> str:
        """Return a quoted string's text: C escapes, ``\\x41``, octal ``\\101``, ``\\u00e9``; UTF-8 bytes."""
        body, out, i = token[1:-1], bytearray(), 0
        while i < len(body):
            char = body[i]
            if char != "\\":
                out += char.encode()
                i += 1
                continue
            escape = body[i + 1]  # the token's pattern puts a character after every backslash
            if escape in _ESCAPES:
                out += _ESCAPES[escape].encode()
                i += 2
            elif escape in "01234567":
                digits = re.match(r"[0-7]{1,3}", body[i + 1 :])
                assert digits is not None
                if int(digits.group(), 8) > 0xFF:
                    raise ConfigError(f"{self.path}:{line}: escape '\\{digits.group()}' is past a byte")
                out.append(int(digits.group(), 8))
                i += 1 + len(digits.group())
            elif escape in "xXuU":
                size = {"x": 2, "X": 2, "u": 4, "U": 8}[escape]
                digits = re.match(rf"[0-9a-fA-F]{{{1 if size == 2 else size},{size}}}", body[i + 2 :])
                if digits is None or (size == 8 and int(digits.group(), 16) > 0x10FFFF):
                    raise ConfigError(f"{self.path}:{line}: escape '\\{escape}' needs {size} hex digits")
                value = int(digits.group(), 16)
                out += bytes([value]) if size == 2 else chr(value).encode("utf-8", "surrogatepass")
                i += 2 + len(digits.group())
            else:
                raise ConfigError(f"{self.path}:{line}: unknown escape '\\{escape}' in a string")
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path}:{line}: a string that is not UTF-8 text") from None


def _number(text: str) -> int | float:
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if any(c in text for c in ".eEfF"):
        return float(text.rstrip("fF"))
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)  # as protobuf reads 017
    return int(text)
