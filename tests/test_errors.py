"""Malformed patterns and mismatched shapes: the exact error each one gets.

Every pattern error is an ``EinplanError`` subclass whose message quotes the
pattern on its second-to-last line and puts a caret under the offending
column on its last line.  The tables below pin the class, the column and a
distinctive piece of the message for each input.
"""

from __future__ import annotations

import re

import pytest
import torch

import einplan
from einplan import EinplanError, PatternError, PatternSyntaxError, ShapeError, UnsupportedError
from einplan.bind import check_created
from einplan.parse import MAX_PATTERN_LENGTH, parse
from einplan.resolve import resolve


def shown(text: str) -> str:
    """How a message displays text: non-printable characters become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def caret_column(message: str, pattern: str) -> int:
    """The column the caret line points at, relative to the quoted pattern."""
    lines = message.splitlines()
    assert len(lines) >= 3, f"no pattern/caret lines in {message!r}"
    pattern_line, caret_line = lines[-2], lines[-1]
    quoted = shown(pattern)
    assert pattern_line.endswith(quoted), f"pattern line {pattern_line!r} does not quote {quoted!r}"
    indent = len(pattern_line) - len(quoted)
    assert pattern_line[:indent].strip() == "", f"pattern line {pattern_line!r} has text before the pattern"
    assert caret_line.strip() == "^", f"caret line is {caret_line!r}"
    return caret_line.index("^") - indent


# --- the pattern table ---------------------------------------------------------------------
#
# (pattern, exception class, caret column, substrings the message must contain)

NEEDS_ARROW = "a pattern needs '->' between the inputs and the output"
NOT_AN_AXIS = "is not an axis"
REDUCER = "expected a reducer (sum, max, min, mean, logsumexp, argmax, argmin, prod, any, all)"

SYNTAX = [
    ("b [n] d -> b d", PatternSyntaxError, 2, ["brackets are einx's mark of a reduced axis", "'b n d -> b d | mean n'"]),
    ("b * d -> b d", PatternSyntaxError, 2, ["einops' pack/unpack pattern: use einplan.pack / einplan.unpack"]),
    ("a b -> a | sum | max a", PatternSyntaxError, 15, ["a clause names what it reduces"]),
    # the arrow
    ("a b", PatternSyntaxError, 3, [NEEDS_ARROW]),
    ("a b c", PatternSyntaxError, 5, [NEEDS_ARROW]),
    ("a, b", PatternSyntaxError, 4, [NEEDS_ARROW]),
    ("", PatternSyntaxError, 0, [NEEDS_ARROW]),
    ("  a b", PatternSyntaxError, 5, [NEEDS_ARROW]),
    ("a b - b", PatternSyntaxError, 4, ["expected '->'"]),
    ("a b -< b", PatternSyntaxError, 4, ["expected '->'"]),
    ("a --> a", PatternSyntaxError, 2, ["expected '->'"]),
    ("a - > a", PatternSyntaxError, 2, ["expected '->'"]),
    ("a-b -> a", PatternSyntaxError, 1, ["expected '->'"]),
    ("a -1 -> a", PatternSyntaxError, 2, ["expected '->'"]),
    ("a b > b", PatternSyntaxError, 4, ["unexpected character '>'"]),
    ("a b => b", PatternSyntaxError, 4, ["unexpected character '='"]),
    ("a <- a", PatternSyntaxError, 2, ["unexpected character '<'"]),
    ("a ->> a", PatternSyntaxError, 4, ["unexpected character '>'"]),
    ("a -> b -> c", PatternSyntaxError, 7, ["unexpected '->'"]),
    ("a b -> -> a", PatternSyntaxError, 7, ["unexpected '->'"]),
    ("-> -> ", PatternSyntaxError, 3, ["unexpected '->'"]),
    ("a -> a | sum a b -> c", PatternSyntaxError, 17, ["unexpected '->'"]),
    # characters that are not in the language
    ("a$ -> a", PatternSyntaxError, 1, ["unexpected character '$'"]),
    ("a @ b -> a", PatternSyntaxError, 2, ["unexpected character '@'"]),
    ("a; b -> a", PatternSyntaxError, 1, ["unexpected character ';'"]),
    ("a: b -> a", PatternSyntaxError, 1, ["unexpected character ':'"]),
    ("a b -> a: b", PatternSyntaxError, 8, ["unexpected character ':'"]),
    ("a # b -> a", PatternSyntaxError, 2, ["unexpected character '#'"]),
    ("a % b -> a", PatternSyntaxError, 2, ["unexpected character '%'"]),
    ("a ! -> a", PatternSyntaxError, 2, ["unexpected character '!'"]),
    ("~a -> a", PatternSyntaxError, 0, ["unexpected character '~'"]),
    ("a + b -> a", PatternSyntaxError, 2, ["unexpected character '+'"]),
    ("a [b] -> a", PatternSyntaxError, 2, ["brackets are einx's mark of a reduced axis"]),
    ("a {b} -> a", PatternSyntaxError, 2, ["unexpected character '{'"]),
    ('a "b" -> a', PatternSyntaxError, 2, ["unexpected character '\"'"]),
    ("a \\ b -> a", PatternSyntaxError, 2, ["unexpected character '\\\\'"]),
    ("a / b -> a", PatternSyntaxError, 2, ["unexpected character '/'"]),
    ("a ? -> a", PatternSyntaxError, 2, ["unexpected character '?'"]),
    ("a & b -> a", PatternSyntaxError, 2, ["unexpected character '&'"]),
    ("a `b` -> a", PatternSyntaxError, 2, ["unexpected character '`'"]),
    ("a b -> a.", PatternSyntaxError, 8, ["is not an axis", "ellipsis is '...'"]),
    ("a.b -> a", PatternSyntaxError, 1, ["is not an axis", "ellipsis is '...'"]),
    ("a .. -> a", PatternSyntaxError, 2, ["is not an axis", "ellipsis is '...'"]),
    ("a .... -> a", PatternSyntaxError, 2, ["'....' is not an axis"]),
    ("3.5 -> a", PatternSyntaxError, 1, ["is not an axis", "ellipsis is '...'"]),
    ("a\x00b -> a", PatternSyntaxError, 1, ["unexpected character '\\x00'"]),
    ("a\x1b[31m -> a", PatternSyntaxError, 1, ["unexpected character '\\x1b'"]),
    ("a \u2211 b -> a", PatternSyntaxError, 2, ["unexpected character '\u2211'"]),
    ("a\u3000b -> a", PatternSyntaxError, 1, ["unexpected character '\\u3000'"]),
    ("a\u200bb -> a", PatternSyntaxError, 1, ["unexpected character '\\u200b'"]),
    ("\u00e4 -> \u00e4", PatternSyntaxError, 0, ["'\u00e4' " + NOT_AN_AXIS]),
    # digits glued to names
    ("1a -> a", PatternSyntaxError, 0, ["'1a' " + NOT_AN_AXIS]),
    ("a 2b -> a", PatternSyntaxError, 2, ["'2b' " + NOT_AN_AXIS]),
    ("a b 2c -> a", PatternSyntaxError, 4, ["'2c' " + NOT_AN_AXIS]),
    ("a b -> a 2b", PatternSyntaxError, 9, ["'2b' " + NOT_AN_AXIS]),
    ("a b -> a | sum 2b", PatternSyntaxError, 15, ["'2b' " + NOT_AN_AXIS]),
    ("12ab -> a", PatternSyntaxError, 0, ["'12ab' " + NOT_AN_AXIS]),
    ("0x1 -> a", PatternSyntaxError, 0, ["'0x1' " + NOT_AN_AXIS]),
    ("1e3 -> a", PatternSyntaxError, 0, ["'1e3' " + NOT_AN_AXIS]),
    # primes in the wrong place
    ("'n -> n", PatternSyntaxError, 0, ['"\'n" ' + NOT_AN_AXIS]),
    ("n ' -> n", PatternSyntaxError, 2, ['"\'" ' + NOT_AN_AXIS]),
    ("n'' ' -> n", PatternSyntaxError, 4, ['"\'" ' + NOT_AN_AXIS]),
    ("n'b -> n", PatternSyntaxError, 0, ['"n\'b" ' + NOT_AN_AXIS]),
    ("a ''b -> a", PatternSyntaxError, 2, ["\"''b\" " + NOT_AN_AXIS]),
    ("a -> a'b", PatternSyntaxError, 5, ['"a\'b" ' + NOT_AN_AXIS]),
    ("a b -> a | sum'b", PatternSyntaxError, 11, ['"sum\'b" ' + NOT_AN_AXIS]),
    ("3' -> 3", PatternSyntaxError, 0, ['"3\'" ' + NOT_AN_AXIS]),
    ("...' -> ...", PatternSyntaxError, 0, ['"...\'" is not an axis']),
    ("(a b)' -> a", PatternSyntaxError, 5, ['"\'" ' + NOT_AN_AXIS]),
    # a prime on a named group: the message should quote the token, as for "3'"
    ("*b' -> *b", PatternSyntaxError, 0, ["*b'"]),
    # named groups
    ("* -> ", PatternSyntaxError, 0, ["einops' pack/unpack pattern"]),
    ("* a -> ", PatternSyntaxError, 0, ["einops' pack/unpack pattern"]),
    ("a **b -> a", PatternSyntaxError, 2, ["is not a named group"]),
    ("a *... -> a", PatternSyntaxError, 2, ["is not a named group"]),
    # a digit after '*': the message should quote the token, as for "1x"
    ("*1x -> a", PatternSyntaxError, 0, ["*1x"]),
    # parentheses
    ("a (b -> a", PatternSyntaxError, 5, ["unexpected '->'", "')'"]),
    ("a (b c -> a", PatternSyntaxError, 7, ["unexpected '->'", "')'"]),
    ("a ((b c) -> a", PatternSyntaxError, 9, ["unexpected '->'", "')'"]),
    ("a b) -> a", PatternSyntaxError, 3, ["unexpected ')'"]),
    ("a (b c)) -> a", PatternSyntaxError, 7, ["unexpected ')'"]),
    ("a )( -> a", PatternSyntaxError, 2, ["unexpected ')'"]),
    ("a (b)) -> a", PatternSyntaxError, 5, ["unexpected ')'"]),
    ("a -> (a", PatternSyntaxError, 7, ["the pattern ends early", "')'"]),
    ("a b -> a (b", PatternSyntaxError, 11, ["the pattern ends early", "')'"]),
    ("a -> a)", PatternSyntaxError, 6, ["unexpected ')'"]),
    ("a b -> (a b))", PatternSyntaxError, 12, ["unexpected ')'"]),
    # commas
    ("a -> a,", PatternSyntaxError, 6, ["unexpected ','"]),
    ("a -> ,", PatternSyntaxError, 5, ["unexpected ','"]),
    ("a b -> a , b", PatternSyntaxError, 9, ["unexpected ','"]),
    ("a, b -> a, b", PatternSyntaxError, 9, ["unexpected ','"]),
    ("a b -> a | sum, b", PatternSyntaxError, 14, ["unexpected ','", "an axis name"]),
    # empty and malformed clauses
    ("a b -> a |", PatternSyntaxError, 10, ["the pattern ends early", REDUCER]),
    ("a b -> a | ", PatternSyntaxError, 11, ["the pattern ends early", REDUCER]),
    ("a b -> a | sum b |", PatternSyntaxError, 18, ["the pattern ends early", REDUCER]),
    ("a b -> a | sum", PatternSyntaxError, 14, ["the pattern ends early", "an axis name"]),
    ("a b -> a b | sum", PatternSyntaxError, 16, ["the pattern ends early", "an axis name"]),
    ("a b -> a | argmax", PatternSyntaxError, 17, ["the pattern ends early", "an axis name"]),
    ("a b -> a | sum b | max", PatternSyntaxError, 22, ["the pattern ends early", "an axis name"]),
    ("a b -> | argmin a b | argmax", PatternSyntaxError, 28, ["the pattern ends early"]),
    ("a b -> a || sum b", PatternSyntaxError, 10, ["unexpected '|'", REDUCER]),
    ("a b -> a | | sum b", PatternSyntaxError, 11, ["unexpected '|'", REDUCER]),
    ("| sum a", PatternSyntaxError, 0, ["unexpected '|'"]),
    ("| -> a", PatternSyntaxError, 0, ["unexpected '|'"]),
    ("a | b -> a", PatternSyntaxError, 2, ["unexpected '|'"]),
    ("a b -> a | sum 1", PatternSyntaxError, 15, ["unexpected '1'", "an axis name"]),
    ("a b -> a | sum (b)", PatternSyntaxError, 15, ["unexpected '('", "an axis name"]),
    ("a b -> a | sum(b)", PatternSyntaxError, 14, ["unexpected '('", "an axis name"]),
    ("a b -> a | max(b)", PatternSyntaxError, 14, ["unexpected '('", "an axis name"]),
    # unknown reducers
    ("a b -> a | std b", PatternSyntaxError, 11, ["unexpected 'std'", REDUCER]),
    ("a b -> a | Sum b", PatternSyntaxError, 11, ["unexpected 'Sum'", REDUCER]),
    ("a b -> a | MAX b", PatternSyntaxError, 11, ["unexpected 'MAX'", REDUCER]),
    ("a b -> a | softmax b", PatternSyntaxError, 11, ["unexpected 'softmax'", REDUCER]),
    ("a b -> a | avg b", PatternSyntaxError, 11, ["unexpected 'avg'", REDUCER]),
    ("a b -> a | median b", PatternSyntaxError, 11, ["unexpected 'median'", REDUCER]),
    ("a b -> a | summax b", PatternSyntaxError, 11, ["unexpected 'summax'", REDUCER]),
    ("a b -> a | argmaxb", PatternSyntaxError, 11, ["unexpected 'argmaxb'", REDUCER]),
    ("a b -> a|sumb", PatternSyntaxError, 9, ["unexpected 'sumb'", REDUCER]),
    ("a b -> a|sum_b", PatternSyntaxError, 9, ["unexpected 'sum_b'", REDUCER]),
]

SEMANTIC = [
    # unknown output axes: the message names the axis
    ("-> a", PatternError, 3, ["output axis 'a' is in no input"]),
    ("a b -> c", PatternError, 7, ["output axis 'c' is in no input", "a b"]),
    ("a, b -> c", PatternError, 8, ["output axis 'c' is in no input"]),
    ("a, b -> a b c", PatternError, 12, ["output axis 'c' is in no input"]),
    ("a b -> max", PatternError, 7, ["output axis 'max' is in no input"]),
    ("a' -> a", PatternError, 6, ["output axis 'a' is in no input"]),
    ("a -> a'", PatternError, 5, ['output axis "a\'" is in no input']),
    ("a''' -> a", PatternError, 8, ["output axis 'a' is in no input"]),
    ("(a b) -> c", PatternError, 9, ["output axis 'c' is in no input"]),
    ("a (b c) -> a d", PatternError, 13, ["output axis 'd' is in no input"]),
    ("a (b c) -> a (b d)", PatternError, 16, ["output axis 'd' is in no input"]),
    ("a b c d e f g h -> i", PatternError, 19, ["output axis 'i' is in no input"]),
    (",,, -> x", PatternError, 7, ["output axis 'x' is in no input"]),
    ("\ta b -> c", PatternError, 8, ["output axis 'c' is in no input"]),
    ("a\nb -> c", PatternError, 7, ["output axis 'c' is in no input"]),
    ("a b ->\n c", PatternError, 8, ["output axis 'c' is in no input"]),
    # an output axis twice
    ("a b -> a a", PatternError, 9, ["output axis 'a' appears twice"]),
    ("a a -> a a", PatternError, 9, ["output axis 'a' appears twice"]),
    ("n n n -> n n", PatternError, 11, ["output axis 'n' appears twice"]),
    ("a b, b c -> a c c", PatternError, 16, ["output axis 'c' appears twice"]),
    ("a b c -> a b c a", PatternError, 15, ["output axis 'a' appears twice"]),
    # an axis twice inside one composite: the caret should sit under the repeat
    ("a b -> (a a)", PatternError, 10, ["axis 'a' appears twice in one composite axis"]),
    ("a (b c) -> a (b b)", PatternError, 16, ["axis 'b' appears twice in one composite axis"]),
    # clauses
    ("a -> a | sum a", PatternError, 13, ["clause axis 'a' is also in the output"]),
    ("a b -> a | sum a", PatternError, 15, ["clause axis 'a' is also in the output"]),
    ("a b -> b | sum b", PatternError, 15, ["clause axis 'b' is also in the output"]),
    ("a b -> a | max a", PatternError, 15, ["clause axis 'a' is also in the output"]),
    ("a -> a  |  sum a", PatternError, 15, ["clause axis 'a' is also in the output"]),
    ("a b -> a | logsumexp b | mean a", PatternError, 30, ["clause axis 'a' is also in the output"]),
    ("a b -> a | sum b | argmax a", PatternError, 26, ["clause axis 'a' is also in the output"]),
    ("a b -> a | sum c", PatternError, 15, ["clause axis 'c' is in no input"]),
    ("a b -> a | max b c", PatternError, 17, ["clause axis 'c' is in no input"]),
    ("a b -> | max a | argmax c", PatternError, 24, ["clause axis 'c' is in no input"]),
    ("a b -> a | sum b'", PatternError, 15, ['clause axis "b\'" is in no input']),
    ("a b -> a | sum b b", PatternError, 17, ["axis 'b' is reduced twice"]),
    ("a b -> a | argmax b b", PatternError, 20, ["axis 'b' is reduced twice"]),
    ("a b -> | sum a b | max b", PatternError, 23, ["axis 'b' is reduced twice"]),
    ("a b -> | sum a | sum a", PatternError, 21, ["axis 'a' is reduced twice"]),
    # argmax / argmin only last
    ("a b -> | argmax a | sum b", PatternError, 9, ["argmax may only be the last clause"]),
    ("a b -> | argmax a | argmin b", PatternError, 9, ["argmax may only be the last clause"]),
    ("a b -> a | argmax b | sum a", PatternError, 11, ["argmax may only be the last clause"]),
    ("a b c -> | argmax b | max c", PatternError, 11, ["argmax may only be the last clause"]),
    ("a b c -> | argmin a | argmax b", PatternError, 11, ["argmin may only be the last clause"]),
    ("a b -> | argmax a b | sum b", PatternError, 9, ["argmax may only be the last clause"]),
    # ellipsis twice in one operand or the output; unknown output group
    ("a ... ... -> a", PatternError, 6, ["'...' appears twice in one operand"]),
    ("... a ... -> a", PatternError, 6, ["'...' appears twice in one operand"]),
    ("... *x ... -> a", UnsupportedError, 4, ["one variadic group"]),
    ("*x a *x -> a", PatternError, 5, ["'*x' appears twice in one operand"]),
    ("*b *b a -> a", PatternError, 3, ["'*b' appears twice in one operand"]),
    ("a -> ... ...", PatternError, 9, ["'...' appears twice in the output"]),
    ("... a, ... -> a ... ...", PatternError, 20, ["'...' appears twice in the output"]),
    ("*a b -> *a *a", PatternError, 11, ["'*a' appears twice in the output"]),
    ("a -> *q", PatternError, 5, ["output group '*q' is in no input"]),
    ("... -> *x", PatternError, 7, ["output group '*x' is in no input"]),
    ("*x, *y -> *x *y *z", PatternError, 16, ["output group '*z' is in no input"]),
    ("a ... -> a | mean *r", PatternError, 18, ["clause group '*r' is in no input"]),
    ("b (h 2) (w 2) -> b h w", PatternError, 11, ["the size 2 appears twice in one operand", "einops as two anonymous axes"]),
    ("b 3 3 -> b", PatternError, 4, ["the size 3 appears twice in one operand", "'n n' for a diagonal"]),
    ("a *x -> a *x | mean x", PatternError, 20, ["clause group '*x' is also in the output"]),
    ("a -> a | mean ...", PatternError, 14, ["clause group '...' is in no input"]),
    ("b *r -> b | sum r | max *r", PatternError, 24, ["group '*r' is reduced twice"]),
    # chain names whose output count matches no reading: show the primed form
    ("n n, b n -> b n n", PatternError, 14, ["'n n', b n' -> ...'", "write the primes explicitly"]),
    ("n n, n n -> n", PatternError, 12, ["'n n', n' n'' -> ...'", "write the primes explicitly"]),
    ("n n, n -> n n", PatternError, 10, ["'n n', n' -> ...'", "write the primes explicitly"]),
    ("n n, n n, n -> n n", PatternError, 15, ["'n n', n' n'', n'' -> ...'", "write the primes explicitly"]),
    ("n n n, n -> n", PatternError, 12, ["'n n' n'', n'' -> ...'", "write the primes explicitly"]),
    ("n n, n n -> n n | sum n", PatternError, 22, ["chain name with no index left", "'n n', n' n'' -> ...'"]),
    ("n n, b n -> b | sum n n", PatternError, 22, ["chain name with no index left", "'n n', b n' -> ...'"]),
    ("n n, b n -> b n | sum n", PatternError, 22, ["chain name with no index left"]),
    ("n n, n -> | max n n n", PatternError, 18, ["chain name with no index left", "'n n', n' -> ...'"]),
]

PATTERN_CASES = SYNTAX + SEMANTIC


def test_the_table_is_large_and_distinct():
    patterns = [case[0] for case in PATTERN_CASES]
    assert len(patterns) >= 100
    assert len(set(patterns)) == len(patterns)


@pytest.mark.parametrize("pattern, cls, column, needles", PATTERN_CASES, ids=[repr(c[0]) for c in PATTERN_CASES])
def test_malformed_pattern(pattern, cls, column, needles):
    with pytest.raises(EinplanError) as info:
        check_created(resolve(pattern), {})  # an output axis in no input needs its size: checked here, before any shape
    error = info.value
    message = str(error)
    assert type(error) is cls, f"{type(error).__name__}: {message}"
    assert isinstance(error, ValueError)
    summary = "\n".join(message.splitlines()[:-2])  # the text above the quoted pattern
    for needle in needles:
        assert needle in summary, f"{needle!r} not in {summary!r}"
    assert caret_column(message, pattern) == column, message


@pytest.mark.parametrize("pattern, cls, column, needles", PATTERN_CASES[::7], ids=[repr(c[0]) for c in PATTERN_CASES[::7]])
def test_every_entry_point_reports_the_same_error(pattern, cls, column, needles):
    """bl, code and explain report the pattern's error before looking at tensors."""
    x = torch.ones(2, 2)
    calls = [
        lambda: einplan.bl(pattern, x),
        lambda: einplan.bl(pattern, x, x),
        lambda: einplan.code(pattern, (2, 2)),
        lambda: einplan.explain(pattern, (2, 2), (2, 2)),
    ]
    for call in calls:
        with pytest.raises(EinplanError) as info:
            call()
        assert type(info.value) is cls
        assert caret_column(str(info.value), pattern) == column


def test_syntax_errors_come_from_the_parser_alone():
    for pattern, _kind, column, _ in SYNTAX:
        with pytest.raises(PatternSyntaxError) as info:
            parse(pattern)
        assert caret_column(str(info.value), pattern) == column


def test_semantic_errors_parse():
    for pattern, *_ in SEMANTIC:
        parse(pattern)  # the grammar accepts it; only its meaning is wrong


def test_syntax_messages_start_with_a_summary():
    for pattern, *_ in SYNTAX:
        with pytest.raises(PatternSyntaxError) as info:
            parse(pattern)
        assert str(info.value).startswith("invalid einplan pattern: ")


def test_an_overlong_pattern_is_refused_with_its_length():
    pattern = "a " * (MAX_PATTERN_LENGTH // 2 + 10) + "-> a"
    with pytest.raises(PatternSyntaxError) as info:
        parse(pattern)
    assert str(MAX_PATTERN_LENGTH) in str(info.value)
    assert str(len(pattern)) in str(info.value)


@pytest.mark.parametrize("pattern", [None, 3, b"a -> a", ["a -> a"]])
def test_a_pattern_that_is_not_a_string_is_a_type_error(pattern):
    with pytest.raises(TypeError):
        parse(pattern)
    with pytest.raises(TypeError):
        einplan.bl(pattern, torch.ones(2))
    with pytest.raises(TypeError):
        einplan.code(pattern, (2,))


# --- shapes -----------------------------------------------------------------------------------
#
# (pattern, shapes, keyword sizes, exception class, substrings the message must contain)

SHAPE_CASES = [
    # sizes that disagree: the axis, the operands and the sizes
    ("b n, m n -> b m", [(2, 3), (4, 5)], {}, ShapeError, ["'n'", "operand 0 ('b n')", "operand 1 ('m n')", "3", "5"]),
    ("a b, b -> a", [(2, 3), (4,)], {}, ShapeError, ["'b'", "operand 0 ('a b')", "operand 1 ('b')", "3", "4"]),
    ("n n -> n", [(2, 3)], {}, ShapeError, ["'n'", "operand 0 ('n n')", "2", "3"]),
    ("b i j, b j k -> b i k", [(2, 3, 4), (5, 4, 6)], {}, ShapeError, ["'b'", "operand 0 ('b i j')", "operand 1 ('b j k')", "2", "5"]),
    (
        "b1 b2 n, n n, b1 b2 n -> b1 b2",
        [(2, 3, 4), (5, 5), (2, 3, 4)],
        {},
        ShapeError,
        ["'n'", "operand 0 ('b1 b2 n')", "operand 1 ('n n')", "4", "5"],
    ),
    ("n n', b n' -> b", [(3, 4), (2, 4)], {}, ShapeError, ["'n'", "operand 0", "3", "4"]),
    ("x y z, z y -> x", [(2, 3, 4), (4, 7)], {}, ShapeError, ["'y'", "operand 0 ('x y z')", "operand 1 ('z y')", "3", "7"]),
    ("... i, ... i -> ...", [(2, 3, 4), (5, 4)], {}, ShapeError, ["'...'", "operand 0", "operand 1", "3", "5"]),
    ("*b i, *b i -> *b", [(2, 3, 4), (2, 6, 4)], {}, ShapeError, ["'*b'", "operand 0", "operand 1", "3", "6"]),
    # wrong rank
    ("b n, m n -> b m", [(2, 3, 1), (4, 3)], {}, ShapeError, ["operand 0 ('b n')", "2 axes", "3 dims", "(2, 3, 1)"]),
    ("b n, m n -> b m", [(2, 3), (3,)], {}, ShapeError, ["operand 1 ('m n')", "2 axes", "1 dims", "(3,)"]),
    ("-> ", [(3,)], {}, ShapeError, ["operand 0", "0 axes", "1 dims"]),
    ("a ... -> a", [()], {}, ShapeError, ["operand 0 ('a ...')", "at least 1", "()"]),
    ("a b ... c -> a", [(2, 3)], {}, ShapeError, ["operand 0", "at least 3", "(2, 3)"]),
    ("a 1 -> a", [(2, 4)], {}, ShapeError, ["operand 0 ('a 1')", "literal 1", "4"]),
    # wrong operand count
    ("b n, m n -> b m", [(2, 3)], {}, ShapeError, ["2 operand(s)", "1 tensor(s)"]),
    ("b n, m n -> b m", [(2, 3), (4, 3), (4, 3)], {}, ShapeError, ["2 operand(s)", "3 tensor(s)"]),
    ("a -> a", [], {}, ShapeError, ["1 operand(s)", "0 tensor(s)"]),
    # keyword sizes
    ("b n -> b", [(2, 3)], {"n": 4}, ShapeError, ["'n'", "keyword n=4", "operand 0 ('b n')", "3"]),
    ("b (h d) -> b h d", [(2, 6)], {"h": 2, "d": 4}, ShapeError, ["(h d)", "operand 0", "6", "h=2", "d=4"]),
    ("b n -> b", [(2, 3)], {"z": 4}, PatternError, ["'z'", "does not have"]),
    ("b (h d) -> b h d", [(2, 6)], {"e": 2}, PatternError, ["'e'", "does not have"]),
    # composite axes
    ("b (h d) -> b h d", [(2, 6)], {"h": 4}, ShapeError, ["(h d)", "operand 0 ('b (h d)')", "size 6", "4 does not divide"]),
    ("b (h d), h -> b d", [(2, 7), (2,)], {}, ShapeError, ["(h d)", "size 7", "2 does not divide"]),
    ("b (h d) -> b h d", [(2, 6)], {}, ShapeError, ["(h d)", "'h', 'd'", "unknown", "keywords"]),
    ("b (h d) -> b h d", [(2, 6)], {"h": 0}, ShapeError, ["(h d)", "size 6"]),
]


# A keyword whose value is not a size at all: the message is about the keyword,
# so it need not quote the pattern.
KEYWORD_VALUE_CASES = [
    ("a -> a", [(3,)], {"a": -1}, ShapeError, ["'a'", "-1", "non-negative int"]),
    ("a -> a", [(3,)], {"a": 2.5}, ShapeError, ["'a'", "2.5"]),
    ("a -> a", [(3,)], {"a": True}, ShapeError, ["'a'", "True"]),
    ("a -> a", [(3,)], {"a": "3"}, ShapeError, ["'a'", "'3'"]),
]


@pytest.mark.parametrize("pattern, shapes, sizes, cls, needles", KEYWORD_VALUE_CASES, ids=[str(c[2]) for c in KEYWORD_VALUE_CASES])
def test_keyword_value_that_is_not_a_size(pattern, shapes, sizes, cls, needles):
    for call in (
        lambda: einplan.bl(pattern, *_tensors(shapes), **sizes),
        lambda: einplan.code(pattern, *shapes, **sizes),
    ):
        with pytest.raises(EinplanError) as info:
            call()
        assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
        for needle in needles:
            assert needle in str(info.value)


def _tensors(shapes):
    return [torch.zeros(shape) for shape in shapes]


@pytest.mark.parametrize("pattern, shapes, sizes, cls, needles", SHAPE_CASES, ids=[f"{c[0]!r}-{c[1]}-{c[2]}" for c in SHAPE_CASES])
def test_shape_error(pattern, shapes, sizes, cls, needles):
    with pytest.raises(EinplanError) as info:
        einplan.bl(pattern, *_tensors(shapes), **sizes)
    message = str(info.value)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {message}"
    for needle in needles:
        if needle.isdigit():  # a size: it must appear as a number outside any quote
            assert re.search(rf"\b{needle}\b", _detail(message, pattern)), f"size {needle} not in {message!r}"
        else:
            assert needle in message, f"{needle!r} not in {message!r}"
    assert shown(pattern) in shown(message), f"the pattern is not quoted in {message!r}"


@pytest.mark.parametrize("pattern, shapes, sizes, cls, needles", SHAPE_CASES, ids=[f"{c[0]!r}-{c[1]}-{c[2]}" for c in SHAPE_CASES])
def test_shape_error_from_code_and_explain(pattern, shapes, sizes, cls, needles):
    """code and explain check shapes given as tuples exactly as bl checks tensors."""
    for entry in (einplan.code, einplan.explain):
        with pytest.raises(EinplanError) as info:
            entry(pattern, *shapes, **sizes)
        assert type(info.value) is cls
        for needle in needles:
            assert needle in str(info.value)


def _detail(message: str, pattern: str) -> str:
    """The message without anything quoted: the pattern, operands, axis names."""
    message = message.replace(pattern, " ")
    message = re.sub(r"\('.*?'\)", " ", message)  # operand 0 ('a 3')
    return re.sub(r"'[^' ]*'|\"[^\" ]*\"", " ", message)  # 'n', "n'"


@pytest.mark.parametrize(
    "pattern, shape, expected, seen",
    [
        ("a 3 -> a", (2, 4), 3, 4),
        ("2 b -> b", (5, 6), 2, 5),
        ("a 3, a -> a", (2, 7), 3, 7),
    ],
)
def test_a_literal_size_mismatch_names_both_sizes(pattern, shape, expected, seen):
    tensors = [torch.zeros(shape)] + ([torch.zeros(shape[0])] if "," in pattern else [])
    with pytest.raises(ShapeError) as info:
        einplan.bl(pattern, *tensors)
    detail = _detail(str(info.value), pattern)
    assert re.search(rf"\b{seen}\b", detail), str(info.value)
    assert re.search(rf"\b{expected}\b", detail), f"the fixed size {expected} is not stated: {info.value}"


def test_a_mismatch_lists_every_operand_involved():
    with pytest.raises(ShapeError) as info:
        einplan.bl("i j, j k, k l -> i l", torch.zeros(2, 3), torch.zeros(4, 5), torch.zeros(5, 6))
    message = str(info.value)
    assert "'j'" in message and "operand 0 ('i j')" in message and "operand 1 ('j k')" in message
    assert "'k'" not in message.split(":")[0]  # the axis named first is the one that disagrees


def test_shape_errors_happen_before_any_torch_op(monkeypatch):
    """The check runs on shapes alone: no torch op touches the data of a bad call."""
    calls = []
    original = torch.matmul

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "matmul", spy)
    with pytest.raises(ShapeError):
        einplan.bl("b n, m n -> b m", torch.zeros(2, 3), torch.zeros(4, 5))
    assert calls == []
