"""The spec grammar: round trips and one-line errors listing the valid forms."""

from __future__ import annotations

import pytest

from ntk_peft.adapters import AdapterSpec, parse_spec
from ntk_peft.errors import UserError


@pytest.mark.parametrize("text,expected", [
    ("full", AdapterSpec("full")),
    ("row1", AdapterSpec("row", rank=1)),
    ("row1:first", AdapterSpec("row", rank=1)),
    ("col3", AdapterSpec("col", rank=3)),
    ("row4:wanda-max", AdapterSpec("row", rank=4, selection="wanda-max")),
    ("rand0.01", AdapterSpec("rand", prob=0.01)),
    ("lora8", AdapterSpec("lora", rank=8)),
    ("more4x8", AdapterSpec("more", rank=8, blocks=4)),
    ("cp16", AdapterSpec("cp", rank=16)),
    ("lorma+8", AdapterSpec("lorma+", rank=8)),
    ("lormapi8:post", AdapterSpec("lormapi", rank=8, post=True)),
    ("bias", AdapterSpec("bias")),
    ("ia3", AdapterSpec("ia3")),
])
def test_parse_and_print(text, expected):
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec
    assert str(parse_spec("row1:first")) == "row1"


@pytest.mark.parametrize("bad,why", [
    ("row0", "the number of rows must be at least 1"),
    ("rowx", "row needs its number"),
    ("lora", "lora needs its number"),
    ("more0x4", "the number of blocks N must be at least 1"),
    ("row1:best", "unknown selection 'best'"),
    ("rand1.5", "the probability must be in (0, 1]"),
    ("adapter9", "not a known adapter"),
])
def test_bad_specs_name_the_text_and_list_valid_forms(bad, why):
    with pytest.raises(UserError) as err:
        parse_spec(bad)
    message = str(err.value)
    assert f"bad adapter spec {bad!r}" in message and why in message
    assert "valid forms: full, linear, row{r}[:sel]" in message and "\n" not in message
