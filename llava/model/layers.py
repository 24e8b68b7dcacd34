"""Which LLM hidden states a layer specification selects.

Indices follow Hugging Face's `output_hidden_states=True`: a model with N decoder layers has N + 1
hidden states; index 0 is the input embeddings (no decoder layer has run) and index N ("last") is
the output of the final decoder layer after the model's final norm. Negative indices count from the
end as in Python over those N + 1 states: -1 is N (the original implementation's "last"), -(N + 1)
is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def all_layers(num_hidden_layers: int) -> list[int]:
    """The layer set "all" for a model with `num_hidden_layers` decoder layers.

    Rule: step = max(1, round_half_up(5 * N / 32)); layers = {k * step for k = 0..5 with
    k * step < N} ∪ {N}, sorted. For N = 32 this is exactly the paper's {0, 5, 10, 15, 20, 25, 32}:
    the input embeddings, five more layers at a stride of 5/32 of the depth, and the last layer.
    Examples: N=2 -> [0, 1, 2]; N=4 -> [0, 1, 2, 3, 4]; N=12 -> [0, 2, 4, 6, 8, 10, 12];
    N=80 -> [0, 13, 26, 39, 52, 65, 80].
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    step = max(1, math.floor(5 * num_hidden_layers / 32 + 0.5))
    layers = {k * step for k in range(6) if k * step < num_hidden_layers}
    layers.add(num_hidden_layers)
    return sorted(layers)


def _check_layer(layer: int, num_hidden_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer index must be an int, got {layer!r}")
    if not -(num_hidden_layers + 1) <= layer <= num_hidden_layers:
        raise ValueError(
            f"layer {layer} is out of range for a model with {num_hidden_layers} hidden layers "
            f"(valid: 0..{num_hidden_layers}, 0 = input embeddings, {num_hidden_layers} = last; "
            f"or -{num_hidden_layers + 1}..-1 counting from the end, -1 = last)"
        )
    return layer if layer >= 0 else num_hidden_layers + 1 + layer


def _parse_layer_token(token: str, num_hidden_layers: int) -> int:
    token = token.strip().lower()
    if token == "last":
        return num_hidden_layers
    try:
        value = int(token)
    except ValueError:
        raise ValueError(
            f"unknown layer spec {token!r}: expected an integer (negative counts from the end), 'last', "
            "'all' or a comma-separated list such as '0,5,10'"
        ) from None
    return _check_layer(value, num_hidden_layers)


def resolve_layers(spec: str | int | Sequence[int], num_hidden_layers: int) -> list[int]:
    """Turn a layer specification into a sorted list of distinct hidden-state indices in 0..N.

    `spec` is a single index (0 = input embeddings; negative counts from the end, -1 = last),
    "last" (= `num_hidden_layers`, i.e. `hidden_states[num_hidden_layers]`, after the final norm),
    "all" (see `all_layers`), a comma-separated string ("0,5,last", "0,-1") or a sequence of ints.

    Raises:
        ValueError: on an index outside -(N + 1)..N (naming it and the depth), an unknown string,
            or an empty spec.
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return all_layers(num_hidden_layers)
        tokens = [t for t in text.split(",") if t.strip()]
        if not tokens:
            raise ValueError(f"empty layer spec {spec!r}")
        layers = [_parse_layer_token(t, num_hidden_layers) for t in tokens]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        layers = [_check_layer(spec, num_hidden_layers)]
    elif isinstance(spec, Sequence):
        if len(spec) == 0:
            raise ValueError("empty layer list")
        layers = [_check_layer(k, num_hidden_layers) for k in spec]
    else:
        raise ValueError(f"unsupported layer spec {spec!r}")
    return sorted(set(layers))
