"""Tests for fnas.genotypes: derivation from alphas, validation, and the JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

from fnas.spaces import primitives as P
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import (
    MY_CUSTOM_GENOTYPE,
    PRIMITIVES_CNN,
    Genotype_CNN,
    derive_genotype,
    genotype_from_dict,
    genotype_to_dict,
    load_genotype,
    random_genotype,
    save_genotype,
    validate_genotype,
)

SPACE = SpaceConfig(C=4, layers=3, nodes=3, multiplier=2, input_shape=(16, 1))  # SEED_KX1, 6 edges
PRIMS = SPACE.primitives


def _row(space: SpaceConfig, i: int, j: int) -> int:
    return space.edges().index((i, j))


def _alphas(entries: dict[tuple[int, int], dict[str, float]], space: SpaceConfig = SPACE) -> torch.Tensor:
    """Alpha matrix with zeros except ``entries[(i, j)][op] = logit``."""
    a = torch.zeros(space.num_edges, len(space.primitives), dtype=torch.float64)
    for (i, j), ops in entries.items():
        for op, value in ops.items():
            a[_row(space, i, j), space.primitives.index(op)] = value
    return a


def test_seed_names():
    assert PRIMITIVES_CNN == list(P.SEED_KX1)
    assert MY_CUSTOM_GENOTYPE.normal[0] == ("conv_bn_relu_3x1", 0)
    assert list(MY_CUSTOM_GENOTYPE.reduce_concat) == [1, 2, 3, 4]


def test_derive_picks_strongest_op_over_all_incoming_edges():
    normal = _alphas({
        (0, 1): {"conv_bn_relu_5x1": 3.0},
        (0, 2): {"max_pool_3x1": 2.0},
        (1, 2): {"skip_connect": 4.0},  # beats the pool on edge 0->2
        (0, 3): {"conv_bn_relu_3x1": 1.0},
        (1, 3): {"conv_bn_relu_7x1": 2.0},
        (2, 3): {"avg_pool_3x1": 5.0},
    })
    reduce = _alphas({(0, 1): {"max_pool_3x1": 1.0}, (0, 2): {"conv_bn_relu_7x1": 3.0}, (1, 3): {"skip_connect": 2.0}})
    g = derive_genotype({"normal": normal, "reduce": reduce}, SPACE)
    assert g.normal == [("conv_bn_relu_5x1", 0), ("skip_connect", 1), ("avg_pool_3x1", 2)]
    assert g.reduce == [("max_pool_3x1", 0), ("conv_bn_relu_7x1", 0), ("skip_connect", 1)]
    assert list(g.normal_concat) == list(g.reduce_concat) == [2, 3]  # range(n - multiplier + 1, n + 1)
    validate_genotype(g, nodes=SPACE.nodes, multiplier=SPACE.multiplier)


def test_derive_ignores_none_even_when_it_is_largest():
    # Node 1: `none` dominates its only edge; the best non-none op still wins.
    # Node 2: on edge 0->2 `none` swamps skip_connect (softmax weight ~e^-8), so the weaker-logit
    # max-pool on edge 1->2 (softmax weight ~0.31) is the stronger op.
    normal = _alphas({
        (0, 1): {"none": 10.0, "conv_bn_relu_3x1": 1.0},
        (0, 2): {"none": 10.0, "skip_connect": 2.0},
        (1, 2): {"max_pool_3x1": 1.0},
        (2, 3): {"none": 50.0},
    })
    g = derive_genotype({"normal": normal, "reduce": torch.zeros_like(normal)}, SPACE)
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    assert g.normal[0] == ("conv_bn_relu_3x1", 0)
    assert g.normal[1] == ("max_pool_3x1", 1)


def test_derive_tie_breaking_lower_input_then_earlier_primitive():
    # All-zero alphas: every op ties on every edge -> input 0, first non-none primitive.
    zeros = torch.zeros(SPACE.num_edges, len(PRIMS), dtype=torch.float64)
    g = derive_genotype({"normal": zeros, "reduce": zeros}, SPACE)
    first = next(p for p in PRIMS if p != "none")
    assert g.normal == g.reduce == [(first, 0)] * SPACE.nodes
    # Same strength on edges 1->3 and 2->3: the lower input index wins.
    tie_edges = _alphas({(1, 3): {"skip_connect": 3.0}, (2, 3): {"skip_connect": 3.0}})
    assert derive_genotype({"normal": tie_edges, "reduce": zeros}, SPACE).normal[2] == ("skip_connect", 1)
    # Same strength for two ops on one edge: the earlier primitive wins.
    tie_ops = _alphas({(0, 1): {"conv_bn_relu_7x1": 3.0, "max_pool_3x1": 3.0}})
    assert derive_genotype({"normal": tie_ops, "reduce": zeros}, SPACE).normal[0] == ("max_pool_3x1", 0)


def test_derive_is_pure_and_accepts_search_config():
    g = torch.Generator().manual_seed(0)
    alphas = {"normal": torch.randn(6, len(PRIMS), generator=g), "reduce": torch.randn(6, len(PRIMS), generator=g)}
    before = {k: v.clone() for k, v in alphas.items()}
    a = derive_genotype(alphas, SPACE)
    b = derive_genotype(alphas, SearchConfig(space=SPACE))
    assert a == b
    assert all(torch.equal(alphas[k], before[k]) for k in alphas)


def test_derive_with_betas_reweights_edges():
    normal = _alphas({(0, 2): {"max_pool_3x1": 2.0}, (1, 2): {"skip_connect": 2.5}})
    zeros = torch.zeros_like(normal)
    assert derive_genotype({"normal": normal, "reduce": zeros}, SPACE).normal[1] == ("skip_connect", 1)
    betas = torch.zeros(SPACE.num_edges, dtype=torch.float64)
    betas[_row(SPACE, 0, 2)] = 5.0  # edge 0->2 dominates node 2's edge softmax
    g = derive_genotype({"normal": normal, "reduce": zeros}, SPACE, betas={"normal": betas, "reduce": betas})
    assert g.normal[1] == ("max_pool_3x1", 0)


@pytest.mark.parametrize(
    "alphas",
    [
        pytest.param({"normal": torch.zeros(5, 7), "reduce": torch.zeros(6, 7)}, id="wrong-rows"),
        pytest.param({"normal": torch.zeros(6, 7), "reduce": torch.zeros(6, 8)}, id="wrong-cols"),
        pytest.param({"normal": torch.zeros(6, 7)}, id="missing-reduce"),
    ],
)
def test_derive_rejects_wrong_alpha_shapes(alphas):
    with pytest.raises(ValueError, match=r"alphas\['(normal|reduce)'\] must have shape \(6, 7\)"):
        derive_genotype(alphas, SPACE)


@pytest.mark.parametrize(
    "genotype",
    [
        pytest.param(MY_CUSTOM_GENOTYPE, id="seed"),
        pytest.param(
            Genotype_CNN([("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2)], [1, 3],
                         [("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("sep_conv_5x5", 1)], range(2, 4)),
            id="non-contiguous-concat",
        ),
    ],
)
def test_json_round_trip(genotype, tmp_path):
    data = genotype_to_dict(genotype)
    json.dumps(data)  # JSON-ready
    assert genotype_from_dict(data) == genotype_from_dict(json.loads(json.dumps(data)))
    back = genotype_from_dict(data)
    assert [tuple(e) for e in back.normal] == [tuple(e) for e in genotype.normal]
    assert list(back.normal_concat) == list(genotype.normal_concat)
    assert list(back.reduce_concat) == list(genotype.reduce_concat)
    path = tmp_path / "genotype.json"
    save_genotype(genotype, path)
    loaded = load_genotype(path)
    assert loaded == back
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left its temporary file behind"


def test_seed_genotype_round_trips_exactly(tmp_path):
    save_genotype(MY_CUSTOM_GENOTYPE, tmp_path / "g.json")
    assert load_genotype(tmp_path / "g.json") == MY_CUSTOM_GENOTYPE


def test_load_genotype_from_run_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"accuracy": 0.5, "genotype": genotype_to_dict(MY_CUSTOM_GENOTYPE)}))
    assert load_genotype(path) == MY_CUSTOM_GENOTYPE


@pytest.mark.parametrize(
    "content, match",
    [
        pytest.param(None, r"does not exist", id="missing-file"),
        pytest.param("{not json", r"not valid JSON", id="not-json"),
        pytest.param("[1, 2]", r"does not hold a genotype", id="not-an-object"),
        pytest.param('{"normal": []}', r"missing keys \['normal_concat', 'reduce', 'reduce_concat'\]",
                     id="missing-keys"),
        pytest.param('{"normal": [["skip_connect"]], "normal_concat": [1], "reduce": [], "reduce_concat": [1]}',
                     r"Malformed genotype JSON", id="malformed-entry"),
        pytest.param('{"normal": [["skip_connect", "0"]], "normal_concat": [1], "reduce": [["skip_connect", 0]], '
                     '"reduce_concat": [1]}', r"expected an integer, got '0'", id="index-as-string"),
        pytest.param('{"normal": [["skip_connect", 0.0]], "normal_concat": [1], "reduce": [["skip_connect", 0]], '
                     '"reduce_concat": [1]}', r"expected an integer, got 0.0", id="index-as-float"),
    ],
)
def test_load_genotype_errors(tmp_path, content, match):
    path = tmp_path / "g.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_genotype(path)


def _seed_with(**changes) -> Genotype_CNN:
    return MY_CUSTOM_GENOTYPE._replace(**changes)


@pytest.mark.parametrize(
    "genotype, kwargs, match",
    [
        pytest.param(_seed_with(normal=[("conv_bn_relu_9x1", 0)] + MY_CUSTOM_GENOTYPE.normal[1:]), {},
                     r"Unknown primitive 'conv_bn_relu_9x1' in genotype\.normal", id="unknown-primitive"),
        pytest.param(_seed_with(reduce=MY_CUSTOM_GENOTYPE.reduce[:2] + [("skip_connect", 3)]
                                + MY_CUSTOM_GENOTYPE.reduce[3:]), {},
                     r"node 3 may only read states 0\.\.2", id="input-index-out-of-range"),
        pytest.param(_seed_with(normal=[("skip_connect", -1)] + MY_CUSTOM_GENOTYPE.normal[1:]), {},
                     r"may only read states", id="negative-input-index"),
        pytest.param(_seed_with(normal_concat=range(1, 6)), {}, r"names nodes \[5\] that do not exist",
                     id="concat-missing-node"),
        pytest.param(_seed_with(reduce_concat=[0, 1]), {}, r"names nodes \[0\] that do not exist",
                     id="concat-names-input"),
        pytest.param(_seed_with(normal_concat=[]), {}, r"normal_concat is empty", id="concat-empty"),
        pytest.param(MY_CUSTOM_GENOTYPE, dict(multiplier=3), r"has 4 nodes but multiplier=3",
                     id="concat-len-vs-multiplier"),
        pytest.param(MY_CUSTOM_GENOTYPE, dict(nodes=3), r"has 4 nodes but the network has nodes_per_layer=3",
                     id="wrong-node-count"),
        pytest.param(_seed_with(normal=[("skip_connect", 0, 1)] + MY_CUSTOM_GENOTYPE.normal[1:]), {},
                     r"must be \(op_name, input_idx\)", id="bad-entry"),
        pytest.param(("skip_connect", 0), {}, r"Expected a Genotype_CNN", id="not-a-genotype"),
    ],
)
def test_validate_genotype_errors(genotype, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_genotype(genotype, **kwargs)


def test_validate_accepts_seed_genotype():
    validate_genotype(MY_CUSTOM_GENOTYPE, nodes=4, multiplier=4)


def test_random_genotype_is_valid_reproducible_and_covers_the_space():
    seen_ops, seen_inputs = set(), set()
    for seed in range(200):
        g = random_genotype(SPACE, torch.Generator().manual_seed(seed))
        validate_genotype(g, nodes=SPACE.nodes, multiplier=SPACE.multiplier)
        assert g == random_genotype(SPACE, torch.Generator().manual_seed(seed))
        assert list(g.normal_concat) == list(derive_genotype({"normal": _alphas({}), "reduce": _alphas({})}, SPACE).normal_concat)
        for op, i in list(g.normal) + list(g.reduce):
            seen_ops.add(op)
            seen_inputs.add(i)
    assert "none" not in seen_ops
    assert seen_ops == {p for p in PRIMS if p != "none"}  # 200 draws hit every op ...
    assert seen_inputs == set(range(SPACE.nodes))  # ... and every input state


def test_random_genotype_is_uniform_over_a_nodes_choices():
    # node 3 picks one of 3 inputs x 6 ops: each pair has probability 1/18
    counts: dict = {}
    n = 3600
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        pick = random_genotype(SPACE, gen).normal[2]
        counts[pick] = counts.get(pick, 0) + 1
    assert len(counts) == 18
    assert max(counts.values()) < 2 * n / 18 and min(counts.values()) > 0.5 * n / 18
