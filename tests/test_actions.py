"""The action grammar: parsing, typing, error messages, round trips, fuzzing."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from env_server.actions import (
    KEYS,
    MAX_ACTION_CHARS,
    Action,
    ActionError,
    ActionSchema,
    Ref,
    api,
    format_value,
    parse_action,
)
from env_server.sim import SIM_SCHEMA

SCHEMA = ActionSchema.build([
    api("files.mkdir", ("path", "str")),
    api("files.rename", ("path", "str"), ("new_name", "str")),
    api("sheet.set_cell", ("cell", "str"), ("value", "value")),
    api("settings.set", ("key", "str"), ("value", "value")),
])


@pytest.mark.parametrize("text, expected", [
    ("click(640, 360)", Action("click", "gui", (640, 360))),
    ("click(#12)", Action("click", "gui", (Ref(12),))),
    ("  double_click( #3 )  ", Action("double_click", "gui", (Ref(3),))),
    ("right_click(1,2)", Action("right_click", "gui", (1, 2))),
    ('type("hello \\"world\\"\\n")', Action("type", "gui", ('hello "world"\n',))),
    ("type('it\\'s')", Action("type", "gui", ("it's",))),
    ('hotkey("ctrl", "S")', Action("hotkey", "gui", ("ctrl", "s"))),
    ("scroll(-3)", Action("scroll", "gui", (-3,))),
    ("scroll(#4, 2)", Action("scroll", "gui", (Ref(4), 2))),
    ("drag(1, 2, 3, 4)", Action("drag", "gui", (1, 2, 3, 4))),
    ("drag(#1, #2)", Action("drag", "gui", (Ref(1), Ref(2)))),
    ('files.mkdir("/home/user/a b")', Action("files.mkdir", "api", ("/home/user/a b",))),
    ('sheet.set_cell("B2", 5)', Action("sheet.set_cell", "api", ("B2", 5))),
    ('sheet.set_cell("B2", -2.5e3)', Action("sheet.set_cell", "api", ("B2", -2500.0))),
    ('settings.set("dark_mode", true)', Action("settings.set", "api", ("dark_mode", True))),
    ("done()", Action("done", "meta", ())),
    ("fail( )", Action("fail", "meta", ())),
])
def test_parses(text, expected):
    assert parse_action(text, SCHEMA) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "empty action"),
    ("clik(1, 2)", "did you mean click"),
    ("click(1)", "arguments fit no form"),
    ("click(1, 2", "missing ')'"),
    ("click 1, 2)", "expected '(' after click"),
    ('type(hello)', "strings must be quoted"),
    ('type("abc)', "unterminated string"),
    ('type("a\\q")', "unknown escape"),
    ('hotkey("ctrl", "banana")', "not a key name"),
    ("hotkey()", "expects 1+ argument"),
    ('files.mkdir("a", "b")', "expects 1 argument"),
    ('files.mkdir(3)', "must be a string"),
    ('file.mkdir("a")', "did you mean files.mkdir"),
    ('mail.send("a")', "apps with API calls"),
    ("click(1, 2) extra", "unexpected text after"),
    ("click(1,, 2)", "expected an argument"),
    ("click(99999999999, 1)", "out of range"),
    ("done() ; rm -rf /", "unexpected character"),
    ("__import__('os')", "unknown action"),
    ("click(1, 2)\ndone()", "one line"),
    ("x" * (MAX_ACTION_CHARS + 1), "too long"),
])
def test_errors_are_clear(text, fragment):
    with pytest.raises(ActionError) as err:
        parse_action(text, SCHEMA)
    assert fragment in str(err.value)


def test_non_string_rejected():
    with pytest.raises(ActionError, match="must be text"):
        parse_action(42, SCHEMA)  # type: ignore[arg-type]


def test_schema_rejects_duplicates_and_bad_names():
    with pytest.raises(ValueError):
        ActionSchema.build([api("files.mkdir", ("p", "str")), api("files.mkdir", ("p", "str"))])
    with pytest.raises(ValueError):
        api("mkdir", ("p", "str"))


def test_describe_lists_every_action():
    text = SIM_SCHEMA.describe()
    for name in SIM_SCHEMA.actions:
        assert name in text


# ------------------------------------------------------------------ property tests
_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-10**9, max_value=10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
)


@given(path=st.text(max_size=40), value=_values)
def test_round_trip(path, value):
    action = Action("sheet.set_cell", "api", (path, value))
    parsed = parse_action(action.to_text(), SCHEMA)
    assert parsed.args[0] == path
    assert parsed.args[1] == value or (isinstance(value, float) and parsed.args[1] == float(repr(value)))


@given(keys=st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=4))
def test_hotkey_round_trip(keys):
    text = f"hotkey({', '.join(format_value(k) for k in keys)})"
    assert parse_action(text, SCHEMA).args == tuple(keys)


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_any_string_gives_action_or_clear_error(text):
    try:
        action = parse_action(text, SIM_SCHEMA)
    except ActionError as err:
        assert err.message and len(str(err)) < 400
    else:
        assert action.name in SIM_SCHEMA.actions
        # what parsed once parses again identically from its canonical text
        assert parse_action(action.to_text(), SIM_SCHEMA) == action


_grammarish = st.lists(
    st.sampled_from(['click', 'type', 'files', '.', 'mkdir', '(', ')', ',', '#', '3', '"', "'", '\\',
                     ' ', '-', '1.5', 'true', 'hotkey', '"ctrl"', 'done', 'sheet', 'set_cell']),
    max_size=14,
).map("".join)


@settings(max_examples=800)
@given(_grammarish)
def test_grammar_like_noise(text):
    with contextlib.suppress(ActionError):
        parse_action(text, SIM_SCHEMA)
