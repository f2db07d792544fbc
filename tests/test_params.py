import pytest
from pydantic import Field

from pipeline.params import ParamsError, Section, load_params, parse_section
from pipeline.stages.prepare import PrepareParams


class Inner(Section):
    rate: float = Field(ge=0, le=1)


class Outer(Section):
    name: str
    items: list[Inner] = []


def test_error_names_the_nested_key_and_the_value():
    with pytest.raises(ParamsError) as err:
        parse_section(Outer, {"s": {"name": "x", "items": [{"rate": 0.5}, {"rate": 3}]}}, "s", "params.yaml")
    text = str(err.value)
    assert "s.items.1.rate" in text and "3" in text and "less than or equal to 1" in text


def test_unknown_key_is_an_error_not_ignored():
    with pytest.raises(ParamsError, match=r"s\.nme: unknown key"):
        parse_section(Outer, {"s": {"name": "x", "nme": 1}}, "s")


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="missing section 'prepare'"):
        parse_section(PrepareParams, {}, "prepare")
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_prepare_rejects_duplicate_names_and_unknown_format():
    spec = {"name": "a", "format": "eg1800_original", "root": "r"}
    with pytest.raises(ParamsError, match="repeated"):
        parse_section(PrepareParams, {"prepare": {"datasets": [spec, spec]}}, "prepare")
    with pytest.raises(ParamsError, match=r"prepare\.datasets\.0\.format"):
        parse_section(PrepareParams, {"prepare": {"datasets": [{**spec, "format": "coco"}]}}, "prepare")
