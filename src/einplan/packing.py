"""einops' pack and unpack: tensors flattened at the ``*`` of a pattern and concatenated, and split back.

``pack([x, y], "b * d")`` matches each tensor against the pattern: the names
before ``*`` are its first dims, those after it its last dims, each the same
size in every tensor, and ``*`` is whatever lies between (any number of dims,
none included).  Each tensor's ``*`` dims are flattened into one and the
tensors are concatenated along that dim.  The ``*`` parts' shapes come back
beside the packed tensor, as ``torch.Size`` (as einops returns them), and
``unpack`` splits the packed dim by them (one size may be ``-1``: the rest)
and reshapes each piece.  Both are reshape, ``torch.cat`` and ``torch.split``:
autograd goes through them.

The pattern language is einops': axis names and exactly one ``*``, apart by
spaces; a name is the grammar's NAME without primes.  It has its own reader
here, not einplan's grammar: that grammar reads a whole ``inputs -> output``
pattern, has no bare ``*``, and most of what it adds (composites, numbers,
primes, ``...``, ``*name``) means nothing to pack; the reader names each of
those in its error instead.

Where einops fails late or not at all, this module refuses early with an
einplan error: named axes that disagree (einops leaves it to torch.cat), mixed
dtypes (torch.cat would promote) or devices, shapes that do not add up to the
packed dim (einops' ``-1`` can silently overlap its neighbours).  Size-0 dims
pack and unpack (einops' ``reshape(..., -1, ...)`` of an empty tensor is
ambiguous to torch), and names that start or end with ``_`` are accepted.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import EinplanError, PatternError, PatternSyntaxError, ShapeError, at

STAR = "*"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # grammar/einplan.lark's NAME, without primes
WORD = re.compile(r"\S+")
NOT_NAME = re.compile(r"[^A-Za-z0-9_]")

# What a word that is not a name holds, the first of these found, and what to say of it.
NOT_A_NAME = (
    (re.compile(r"->|[,|]"), "is one list of axes (no '->', ',' or '|'): it holds for every tensor alike"),
    (re.compile(r"\.\.\."), "has no '...': the one '*' stands for the dims between the names"),
    (re.compile(r"[()]"), "has no composite axes: name each dim, and '*' for the packed ones"),
    (re.compile(r"\*"), "writes '*' alone, apart from the names by spaces: the packed dims have no name"),
    (re.compile(r"'"), "has no primes: each name is one dim of every tensor"),
    (re.compile(r"^[0-9]"), "has no numbers: name the dim"),
)


@dataclass(frozen=True)
class PackPattern:
    """A pack pattern read: the names before and after its ``*``, and where each is written."""

    source: str
    names: tuple[str, ...]  # the named axes in order, '*' left out
    columns: tuple[int, ...]  # where each name starts in source
    before: int  # how many names come before '*'
    star_column: int

    @property
    def after(self) -> int:
        return len(self.names) - self.before

    def dim_of(self, k: int, ndim: int) -> int:
        """The dim of an ``ndim``-dim tensor that name ``k`` matches."""
        return k if k < self.before else ndim - len(self.names) + k


# --- the pattern -------------------------------------------------------------------------------


def word_problem(word: str) -> tuple[int, str] | None:
    """Where a word of the pattern (not ``*``) stops being an axis name, and what to say; None for a name."""
    if NAME.fullmatch(word):
        return None
    for mark, what in NOT_A_NAME:
        found = mark.search(word)
        if found:
            return found.start(), what
    bad = NOT_NAME.search(word)
    offset = bad.start() if bad else 0
    return offset, f"has {word!r}, which is not an axis name (letters, digits and '_', not starting with a digit)"


def read_pattern(pattern: str, op: str) -> PackPattern:
    """Read ``pattern`` for ``op`` ("pack" or "unpack"), or raise an einplan error with a caret."""
    if not isinstance(pattern, str):
        raise TypeError(f"{op}'s pattern is a str, not {type(pattern).__name__}")
    return read_words(pattern, op)


@functools.lru_cache(maxsize=256)
def read_words(pattern: str, op: str) -> PackPattern:
    names: list[str] = []
    columns: list[int] = []
    stars: list[int] = []
    for match in WORD.finditer(pattern):
        word, column = match.group(), match.start()
        if word == STAR:
            stars.append(column)
            continue
        problem = word_problem(word)
        if problem:
            raise at(PatternSyntaxError, pattern, column + problem[0], f"{op}'s pattern {problem[1]}")
        if word in names:
            first = columns[names.index(word)]
            message = f"axis {word!r} is named twice in {op}'s pattern (first at column {first}): each name is one dim of every tensor"
            raise at(PatternError, pattern, column, message)
        names.append(word)
        columns.append(column)
    if not stars:
        raise at(PatternSyntaxError, pattern, len(pattern), f"{op}'s pattern has no '*': one '*' marks the packed dims, as in 'b * d'")
    if len(stars) > 1:
        raise at(PatternSyntaxError, pattern, stars[1], f"{op}'s pattern has a second '*': exactly one '*' marks the packed dims")
    before = sum(1 for column in columns if column < stars[0])
    return PackPattern(pattern, tuple(names), tuple(columns), before, stars[0])


# --- pack --------------------------------------------------------------------------------------


def check_tensors(tensors: object) -> list[torch.Tensor]:
    """A non-empty list or tuple of tensors of one dtype and one device (TypeError / einplan error if not)."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"pack takes a list of tensors, not a {type(tensors).__name__}")
    if not tensors:
        raise ShapeError("pack needs at least one tensor, got none")
    for k, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"pack's tensor {k} is a {type(tensor).__name__}, not a torch.Tensor")
    first = tensors[0]
    for k, tensor in enumerate(tensors):
        if tensor.dtype != first.dtype:
            raise EinplanError(f"pack's tensors must share one dtype: tensor 0 is {first.dtype}, tensor {k} is {tensor.dtype}")
        if tensor.device != first.device:
            raise EinplanError(f"pack's tensors must be on one device: tensor 0 is on {first.device}, tensor {k} is on {tensor.device}")
    return list(tensors)


def check_shapes(tensors: list[torch.Tensor], spec: PackPattern) -> None:
    """Every tensor has a dim per name, and each name the same size in all of them."""
    least = len(spec.names)
    for k, tensor in enumerate(tensors):
        if tensor.dim() < least:
            raise ShapeError(
                f"pack's tensor {k} has shape {tuple(tensor.shape)}, {tensor.dim()} dim(s), "
                f"but '{spec.source}' names {least}: it needs at least {least} dim(s)"
            )
    first = tensors[0]
    for k, tensor in enumerate(tensors[1:], start=1):
        for j, name in enumerate(spec.names):
            want, got = first.shape[spec.dim_of(j, first.dim())], tensor.shape[spec.dim_of(j, tensor.dim())]
            if want != got:
                message = (
                    f"axis {name!r} is {want} in pack's tensor 0 but {got} in tensor {k} "
                    f"(shapes {tuple(first.shape)} and {tuple(tensor.shape)})"
                )
                raise at(ShapeError, spec.source, spec.columns[j], message)


def pack(tensors: Sequence[torch.Tensor], pattern: str) -> tuple[torch.Tensor, list[torch.Size]]:
    """Pack ``tensors`` into one along the ``*`` of ``pattern``, as ``einops.pack``.

    Returns the packed tensor and the shape of each tensor's ``*`` dims, which
    ``unpack`` takes back::

        >>> packed, shapes = pack([x, y], "b * d")    # x: (2, 5), y: (2, 3, 4, 5)
        >>> packed.shape, shapes
        (torch.Size([2, 13, 5]), [torch.Size([]), torch.Size([3, 4])])
    """
    spec = read_pattern(pattern, "pack")
    checked = check_tensors(tensors)
    check_shapes(checked, spec)
    shapes: list[torch.Size] = []
    pieces = []
    for tensor in checked:
        end = tensor.dim() - spec.after
        packed = tensor.shape[spec.before : end]
        shapes.append(packed)
        # the flattened size written out: reshape's -1 is ambiguous when another dim is 0
        pieces.append(tensor.reshape((*tensor.shape[: spec.before], math.prod(packed), *tensor.shape[end:])))
    return torch.cat(pieces, dim=spec.before), shapes


# --- unpack ------------------------------------------------------------------------------------


def check_shape(k: int, shape: object) -> tuple[int, ...]:
    """Shape ``k`` of unpack's list: ints, each at least 0 or a -1."""
    if not isinstance(shape, (list, tuple)):  # torch.Size is a tuple
        raise TypeError(f"unpack's shape {k} is {shape!r}, not a tuple, list or torch.Size")
    for size in shape:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"unpack's shape {k} is {shape!r}: its sizes must be ints, not {type(size).__name__}")
        if size < -1:
            raise ShapeError(f"unpack's shape {k} is {tuple(shape)}: a size is at least 0, or -1 for the rest")
    return tuple(shape)


def infer(shapes: list[tuple[int, ...]], length: int, spec: PackPattern) -> list[tuple[int, ...]]:
    """The shapes with their one -1 (if any) worked out, so that they fill ``length`` exactly."""
    unknown = [k for k, shape in enumerate(shapes) if -1 in shape]
    if len(unknown) > 1 or any(shapes[k].count(-1) > 1 for k in unknown):
        listed = ", ".join(f"shape {k} is {shapes[k]}" for k in unknown)
        raise ShapeError(f"unpack infers at most one size (one -1 in all the shapes): {listed}")
    known = [math.prod(shape) for shape in shapes if -1 not in shape]
    held = f"{sum(known)} ({' + '.join(map(str, known)) or 'none'}) along '*'"
    rest = length - sum(known)
    if not unknown:
        if rest:
            message = f"unpack's shapes hold {held}, but the packed tensor's '*' dim is {length}"
            raise at(ShapeError, spec.source, spec.star_column, message)
        return shapes
    k = unknown[0]
    part = math.prod(size for size in shapes[k] if size != -1)
    if rest < 0:
        message = f"unpack's shapes other than shape {k} {shapes[k]} hold {held}, more than the packed tensor's '*' dim, {length}"
        raise at(ShapeError, spec.source, spec.star_column, message)
    if part == 0 and rest == 0:
        why = "beside a 0 it could be any size"
    elif part == 0:
        why = (
            f"whatever the -1, a shape with a 0 holds nothing, but the other shapes leave {rest} of the packed tensor's '*' dim ({length})"
        )
    elif rest % part:
        why = f"{part} does not divide the {rest} that the other shapes leave of the packed tensor's '*' dim ({length})"
    else:
        why = ""
    if why:
        raise at(ShapeError, spec.source, spec.star_column, f"unpack cannot infer the -1 of shape {k} {shapes[k]}: {why}")
    shapes[k] = tuple(rest // part if size == -1 else size for size in shapes[k])
    return shapes


def unpack(packed: torch.Tensor, shapes: Sequence[Sequence[int]], pattern: str) -> list[torch.Tensor]:
    """Split ``packed`` along the ``*`` of ``pattern`` into one tensor per shape, as ``einops.unpack``.

    ``shapes`` are the ``*`` parts' shapes, as ``pack`` returns them; one size
    among them all may be ``-1``, the rest of the packed dim::

        >>> x, y = unpack(packed, [(), (3, -1)], "b * d")   # packed: (2, 13, 5)
        >>> x.shape, y.shape
        (torch.Size([2, 5]), torch.Size([2, 3, 4, 5]))
    """
    spec = read_pattern(pattern, "unpack")
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"unpack's packed tensor is a {type(packed).__name__}, not a torch.Tensor")
    if packed.dim() != len(spec.names) + 1:
        raise ShapeError(
            f"unpack's packed tensor has shape {tuple(packed.shape)}, {packed.dim()} dim(s), "
            f"but '{spec.source}' has {len(spec.names) + 1}: one per name and one for '*'"
        )
    if not isinstance(shapes, (list, tuple)):
        raise TypeError(f"unpack takes a list of shapes, not a {type(shapes).__name__}")
    wanted = infer([check_shape(k, shape) for k, shape in enumerate(shapes)], packed.shape[spec.before], spec)
    if not wanted:
        return []
    start, end = packed.shape[: spec.before], packed.shape[spec.before + 1 :]
    pieces = torch.split(packed, [math.prod(shape) for shape in wanted], dim=spec.before)
    return [piece.reshape((*start, *shape, *end)) for piece, shape in zip(pieces, wanted, strict=True)]
