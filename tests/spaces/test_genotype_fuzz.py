"""Fuzzed genotype JSON (hypothesis): every input either parses to a valid genotype or raises ValueError.

A user's genotype file is a boundary: a TypeError, KeyError or IndexError from inside the parser would
reach the CLI as a traceback instead of an exit-2 message.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE, genotype_from_dict, genotype_to_dict
from fnas.spaces.chain import ChainSpaceConfig

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["conv_bn_relu_3x1", "skip_connect", "none", "identity", "conv_k3_d1", "sep_k9_d4", "chain"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
CELL = genotype_to_dict(MY_CUSTOM_GENOTYPE)
CHAIN_SPACE = ChainSpaceConfig(widths=(8, 16, 16, 8))
CHAIN = CHAIN_SPACE.genotype_to_dict(CHAIN_SPACE.fcn_genotype(8))


def _mutations(base: dict):
    """The valid dict with one key replaced by arbitrary JSON, or a key dropped, or an arbitrary document."""
    replaced = st.builds(lambda k, v: {**base, k: v}, st.sampled_from(sorted(base)), JSON)
    dropped = st.builds(lambda k: {key: v for key, v in base.items() if key != k}, st.sampled_from(sorted(base)))
    return replaced | dropped | JSON


def _only_value_errors(parse, data) -> None:
    try:
        parse(data)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(CELL))
def test_cell_genotype_json(data):
    _only_value_errors(genotype_from_dict, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(CHAIN))
def test_chain_genotype_json(data):
    _only_value_errors(CHAIN_SPACE.genotype_from_dict, data)
