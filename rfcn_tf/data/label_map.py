"""The TF Object Detection API's label map (`label_map.pbtxt`): read and write, no TensorFlow.

The format is the text form of the OD API's `StringIntLabelMap` protocol buffer:

    item {
      id: 1                      # >= 1; 0 is reserved for a "background" item
      name: "RBC"                # usually what image/object/class/text holds
      display_name: "red cell"   # optional, for people
    }

`image/object/class/label` in the OD API's tf.train.Examples holds these ids (1-based, maybe
with gaps, e.g. COCO's 1..90). rfcn_tf's dataset labels are 0..C-1 (docs/ARCHITECTURE.md), so a
label map of C class items maps id -> label by ascending id: the item with the smallest id is
label 0. An item with id 0 must be named "background" (as the OD API's label_map_util requires)
and is not a class.

The parser reads the subset of protobuf text format that label maps use (`key: value` with
quoted strings, integers or enum words, `#` comments, nested `{ ... }` blocks such as
`keypoints`, which are skipped) without the protobuf package; errors name the file and line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from rfcn_tf.data.errors import DataError

__all__ = [
    "LabelMapItem",
    "class_names_of",
    "format_label_map",
    "items_from_class_names",
    "parse_label_map",
    "read_label_map",
    "write_label_map",
]

BACKGROUND = "background"

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+\-]+) | (?P<punct>[{}:;,\[\]<>])
""",
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclasses.dataclass(frozen=True)
class LabelMapItem:
    """One `item { ... }` of a label map.

    Attributes:
      id: the OD API class id (>= 1 for a class; 0 only for "background").
      name: the item's `name`.
      display_name: the item's `display_name`, or None when absent.
    """

    id: int
    name: str
    display_name: str | None = None

    @property
    def class_name(self) -> str:
        """The name rfcn_tf shows: `display_name` when set, else `name`."""
        return self.display_name if self.display_name else self.name


def _tokens(text: str, where: str):
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise DataError(
                f"{where}:{line}: cannot parse label map text at {text[pos : pos + 20]!r}"
            )
        kind = match.lastgroup
        value = match.group()
        pos = match.end()
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            yield kind, value, line


def _unquote(token: str, where: str, line: int) -> str:
    body = token[1:-1]
    out, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                raise DataError(f"{where}:{line}: unsupported escape in string {token}")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str, where: str):
        self.where = where
        self.tokens = list(_tokens(text, where))
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None, None)

    def take(self):
        token = self.peek()
        if token[0] is None:
            last = self.tokens[-1][2] if self.tokens else 1
            raise DataError(f"{self.where}:{last}: label map text ends inside a block")
        self.pos += 1
        return token

    def fail(self, line, message):
        raise DataError(f"{self.where}:{line}: {message}")

    def block(self, line):
        """Fields of a `{ ... }` block (opening brace taken) -> list of (key, value, line)."""
        fields = []
        while True:
            kind, value, at = self.take()
            if value in ("}", ">"):
                return fields
            if kind != "word":
                self.fail(at, f"expected a field name, got {value!r}")
            key = value
            kind2, value2, at2 = self.peek()
            if value2 == ":":
                self.take()
                kind2, value2, at2 = self.peek()
            if value2 in ("{", "<"):
                self.take()
                fields.append((key, self.block(at2), at))
            else:
                kind2, value2, at2 = self.take()
                if kind2 == "string":
                    fields.append((key, _unquote(value2, self.where, at2), at))
                elif kind2 == "word":
                    fields.append((key, value2, at))
                else:
                    self.fail(at2, f"expected a value for {key!r}, got {value2!r}")
            if self.peek()[1] in (";", ","):
                self.take()

    def items(self):
        result = []
        while self.peek()[0] is not None:
            _, value, line = self.take()
            if value != "item":
                self.fail(line, f"expected 'item {{', got {value!r}")
            if self.peek()[1] == ":":
                self.take()
            _, value, at = self.take()
            if value not in ("{", "<"):
                self.fail(at, f"expected '{{' after 'item', got {value!r}")
            result.append((line, self.block(at)))
        return result


def _item(fields, line: int, where: str) -> LabelMapItem:
    values = {}
    for key, value, at in fields:
        if key in ("id", "name", "display_name"):
            if key in values:
                raise DataError(f"{where}:{at}: item has two {key!r} fields")
            values[key] = (value, at)
    if "id" not in values:
        raise DataError(f"{where}:{line}: item has no 'id'")
    raw_id, at = values["id"]
    if isinstance(raw_id, list) or not re.fullmatch(r"[+-]?\d+", raw_id):
        raise DataError(f"{where}:{at}: item id must be an integer, got {raw_id!r}")
    item_id = int(raw_id)
    name = values.get("name", ("", line))[0]
    display = values.get("display_name", (None, line))[0]
    if isinstance(name, list) or isinstance(display, list):
        raise DataError(f"{where}:{line}: item name and display_name must be strings")
    if item_id < 0:
        raise DataError(f"{where}:{at}: label map ids must be >= 0, got {item_id}")
    if item_id == 0 and BACKGROUND not in (name, display):
        raise DataError(
            f"{where}:{at}: label map id 0 is reserved for the background item, got name {name!r}"
        )
    if not name and not display:
        raise DataError(f"{where}:{line}: item {item_id} has neither 'name' nor 'display_name'")
    return LabelMapItem(item_id, name or display, display)


def parse_label_map(text: str, *, source: str = "<label map>") -> list[LabelMapItem]:
    """Label map text -> its class items sorted by id (a background item, id 0, is dropped).

    Args:
      text: the `label_map.pbtxt` contents.
      source: names the text in error messages (a file path).

    Raises:
      DataError: a syntax error, an item without id or name, a negative id, id 0 not named
        "background", duplicate ids or class names, or no class item (each names line numbers).
    """
    items = []
    for line, fields in _Parser(text, source).items():
        items.append((line, _item(fields, line, source)))
    seen_ids, seen_names = {}, {}
    classes = []
    for line, item in items:
        if item.id in seen_ids:
            raise DataError(
                f"{source}:{line}: id {item.id} appears twice (also line {seen_ids[item.id]})"
            )
        seen_ids[item.id] = line
        if item.id == 0:
            continue
        if item.class_name in seen_names:
            raise DataError(
                f"{source}:{line}: class name {item.class_name!r} appears twice "
                f"(also line {seen_names[item.class_name]})"
            )
        seen_names[item.class_name] = line
        classes.append(item)
    if not classes:
        raise DataError(f"{source}: the label map has no class items (item {{ id: 1 name: ... }})")
    return sorted(classes, key=lambda i: i.id)


def read_label_map(path: str | Path) -> list[LabelMapItem]:
    """`parse_label_map` of a file (local path or any tf.io.gfile path such as gs://)."""
    path = str(path)
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "r") as f:
                text = f.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label map {path}: {exc}") from None
    except Exception as exc:  # tf.errors.OpError from gfile
        raise DataError(f"cannot read label map {path}: {getattr(exc, 'message', exc)}") from None
    return parse_label_map(text, source=path)


def class_names_of(items: Sequence[LabelMapItem]) -> list[str]:
    """Class names in label order (ascending id): `class_names[label]` names label `label`."""
    return [item.class_name for item in sorted(items, key=lambda i: i.id)]


def items_from_class_names(
    class_names: Iterable[str], ids: Sequence[int] | None = None
) -> list[LabelMapItem]:
    """Items for dataset labels 0..C-1: id = label + 1 (or `ids[label]`, e.g. COCO's ids)."""
    names = list(class_names)
    ids = list(range(1, len(names) + 1)) if ids is None else [int(i) for i in ids]
    if len(ids) != len(names):
        raise ValueError(f"{len(ids)} ids for {len(names)} class names")
    return [LabelMapItem(i, n) for i, n in zip(ids, names)]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_label_map(items: Sequence[LabelMapItem]) -> str:
    """The label map text of `items` (the OD API's layout: one `item { ... }` block each)."""
    blocks = []
    for item in sorted(items, key=lambda i: i.id):
        lines = ["item {", f"  id: {int(item.id)}", f"  name: {_quote(item.name)}"]
        if item.display_name:
            lines.append(f"  display_name: {_quote(item.display_name)}")
        lines.append("}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n"


def write_label_map(path: str | Path, items: Sequence[LabelMapItem]) -> None:
    """Writes `format_label_map(items)` to `path` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_label_map(items), encoding="utf-8")
