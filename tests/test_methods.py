"""The decoding methods are defined once (model/requests.py's DECODING_METHODS): everything that
names them follows that table, and each method's parameters are the ones that change its captions."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cli.generate import register
from model.generate import DECODERS, load_generator
from model.requests import COMMON_PARAMETERS, DECODING_METHODS, METHODS, GenerationRequest, request_rows
from tests.conftest import SYNTHETIC_CAPTIONS

FIELDS = {f.name for f in dataclasses.fields(GenerationRequest)}


def test_the_table_names_each_method_once_with_a_line_of_help():
    assert METHODS == tuple(m.name for m in DECODING_METHODS)
    assert len(set(METHODS)) == len(METHODS)
    assert all(m.help and "\n" not in m.help for m in DECODING_METHODS)


def test_every_request_field_is_common_or_some_methods_parameter():
    named = set(COMMON_PARAMETERS) | {p for m in DECODING_METHODS for p in m.parameters}
    assert named == FIELDS - {"method"}
    for m in DECODING_METHODS:
        assert not set(m.parameters) & set(COMMON_PARAMETERS), m.name


def test_the_generator_decodes_every_method_and_the_config_and_command_line_offer_them():
    assert set(DECODERS) == set(METHODS)
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    generate = sub.choices["generate"]
    for m in METHODS:
        assert generate.parse_args(["drake", "--method", m]).method == m
    with pytest.raises(SystemExit):
        generate.parse_args(["drake", "--method", "nucleus"])
    shown = " ".join(generate.format_help().split())
    assert all(f"{m.name}: {m.help}" in shown for m in DECODING_METHODS)


def test_rows_per_request():
    request = GenerationRequest("T", n=2, best_of=8, beam_width=3)
    rows = {m: request_rows(dataclasses.replace(request, method=m)) for m in METHODS}
    assert rows == {"greedy": 2, "sample": 8, "beam": 3}


# A value other than the default for every field a method might ignore.
OTHER_VALUES = {
    "temperature": 1.5,
    "top_k": 5,
    "top_p": 0.5,
    "seed": 7,
    "best_of": 4,
    "rank_length_power": 0.5,
    "beam_width": 5,
}


@pytest.mark.parametrize("method", DECODING_METHODS, ids=METHODS)
def test_fields_outside_a_methods_parameters_leave_its_captions_alone(tiny_checkpoint, method):
    generator = load_generator(tiny_checkpoint)
    ignored = sorted(FIELDS - {"method"} - set(COMMON_PARAMETERS) - set(method.parameters))
    assert set(ignored) <= set(OTHER_VALUES)
    for template in list(SYNTHETIC_CAPTIONS)[:3]:
        request = GenerationRequest(template, method=method.name, n_boxes=2, seed=1, max_length=40, n=2)
        changed = dataclasses.replace(request, **{name: OTHER_VALUES[name] for name in ignored})
        plain, other = generator.generate_batch([request, changed])
        assert [c.boxes for c in plain.captions] == [c.boxes for c in other.captions], (template, ignored)
