"""Layer specifications: the "all" rule, explicit lists, negative indices, bad specs."""

from __future__ import annotations

import pytest

from llava.model.layers import all_layers, resolve_layers


@pytest.mark.parametrize(
    "depth, expected",
    [
        (2, [0, 1, 2]),
        (4, [0, 1, 2, 3, 4]),
        (12, [0, 2, 4, 6, 8, 10, 12]),
        (32, [0, 5, 10, 15, 20, 25, 32]),
        (80, [0, 13, 26, 39, 52, 65, 80]),
    ],
)
def test_all_layers_rule(depth, expected):
    assert all_layers(depth) == expected
    assert resolve_layers("all", depth) == expected
    assert resolve_layers(" ALL ", depth) == expected


def test_all_layers_is_the_paper_set_at_32():
    assert all_layers(32) == [0, 5, 10, 15, 20, 25, 32]
    assert set(resolve_layers("all", 32)) == {0, 5, 10, 15, 20, 25, 32}
    with pytest.raises(ValueError, match="num_hidden_layers must be >= 1"):
        all_layers(0)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0", [0]),
        (0, [0]),
        (7, [7]),
        ("7", [7]),
        ("last", [12]),
        ("0,5,10", [0, 5, 10]),
        ("10, 0 ,5", [0, 5, 10]),
        ("0,last", [0, 12]),
        ([0, 5, 10], [0, 5, 10]),
        ((10, 5, 5, 0), [0, 5, 10]),
        (12, [12]),
    ],
)
def test_resolve_layers(spec, expected):
    assert resolve_layers(spec, 12) == expected


@pytest.mark.parametrize(
    "spec, expected",
    [
        (-1, [12]),  # the original implementation's "last": hidden_states[-1]
        ("-1", [12]),
        ("0,-1", [0, 12]),
        ([-2, -1], [11, 12]),
        (-13, [0]),  # -(N + 1) is the input embeddings
        ("-1,last,12", [12]),
    ],
)
def test_negative_layers_count_from_the_end(spec, expected):
    assert resolve_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", [13, "13", [0, 13], "0,13", -14, "-14"])
def test_layer_out_of_range_names_value_and_depth(spec):
    with pytest.raises(ValueError, match=r"layer -?1[34] .*12 hidden layers"):
        resolve_layers(spec, 12)


@pytest.mark.parametrize("spec", ["every", "0,five", "", " , ", [], True, 1.5])
def test_bad_layer_spec_raises(spec):
    with pytest.raises(ValueError):
        resolve_layers(spec, 12)


def test_bad_depth_raises():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        resolve_layers("all", 0)
