"""The optional `dca` block of a plans configuration: plans['configurations'][name]['dca'].

Every key is optional; the defaults follow the paper (DESIGN.md, "Defaults and why") except `merge`:

    "dca": {"stages": 4, "token_grid": null, "max_tokens": 1024, "n_blocks": 1, "channel_heads": 1,
            "spatial_heads": 4, "channel_attention": true, "spatial_attention": true, "merge": "residual",
            "channel_scores": "paper", "spatial_scores": "paper", "temperature": 1.0}

`merge` "residual" adds the refined skip's branch to the skip and starts it at zero, so the DCA U-Net starts as the
stock U-Net; "paper" is the paper's BatchNorm and ReLU of the sum (see nnunet_dca.dca.DCA). `channel_scores` and
`spatial_scores` choose how each attention's scores are normalized before the softmax ("paper": scaled dot products;
see nnunet_dca.dca.ChannelCrossAttention and SpatialCrossAttention); `temperature` is where their learnable
temperatures start. Blocks saved before a key existed (a model folder's
`dca_resolved`, a plans-only configuration's `arch_kwargs.dca`) mean what every model trained before it used,
`ADDED_LATER`.
"""

from __future__ import annotations

from typing import Any, Mapping

# how DCA's refined skip joins the skip: see nnunet_dca.dca.DCA
MERGES = ("paper", "residual")
# how each attention normalizes its scores before the softmax: see nnunet_dca.dca.ChannelCrossAttention and
# SpatialCrossAttention
CHANNEL_SCORES = ("paper", "cosine", "standardized", "qk_norm")
SPATIAL_SCORES = ("paper", "qk_norm")

DEFAULTS: dict[str, Any] = {
    "stages": 4,
    "token_grid": None,
    "max_tokens": 1024,
    "n_blocks": 1,
    "channel_heads": 1,
    "spatial_heads": 4,
    "channel_attention": True,
    "spatial_attention": True,
    "merge": "residual",
    "channel_scores": "paper",
    "spatial_scores": "paper",
    "temperature": 1.0,
}
# keys added after models were saved, and what a saved block without them was trained with
ADDED_LATER = {"merge": "paper", "channel_scores": "paper", "spatial_scores": "paper", "temperature": 1.0}


def parse_dca_block(block: Mapping[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """Validates a `dca` block (None means all defaults) and returns (stages, keyword arguments of `DCA`).

    stages is the number of encoder skips DCA refines, before clipping to what the network has. The keyword
    arguments are every other key, defaults filled in, lists turned into tuples. Raises ValueError naming the key.
    """
    if block is None:
        block = {}
    if not isinstance(block, Mapping):
        raise ValueError(f"the dca block must be a JSON object like {{\"stages\": 4}}, got {block!r}")
    unknown = sorted(set(block) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the dca block; valid keys are {list(DEFAULTS)}")
    settings = {**DEFAULTS, **block}

    for key in ("stages", "n_blocks"):
        if not _is_positive_int(settings[key]):
            raise ValueError(f"dca '{key}' must be a positive integer, got {settings[key]!r}; "
                             f"the default is {DEFAULTS[key]}")
    if settings["max_tokens"] is not None and not _is_positive_int(settings["max_tokens"]):
        raise ValueError(f"dca 'max_tokens' must be a positive integer or null (uncapped, the paper's rule), "
                         f"got {settings['max_tokens']!r}")
    if not (settings["token_grid"] is None or _is_positive_int(settings["token_grid"])
            or _is_list_of_positive_ints(settings["token_grid"])):
        raise ValueError(f"dca 'token_grid' must be null (the paper's rule), a positive integer or a list of one "
                         f"positive integer per spatial axis, got {settings['token_grid']!r}")
    for key in ("channel_heads", "spatial_heads"):
        if not (_is_positive_int(settings[key]) or _is_list_of_positive_ints(settings[key])):
            raise ValueError(f"dca '{key}' must be a positive integer or a list of one per stage, "
                             f"got {settings[key]!r}; the default is {DEFAULTS[key]}")
    for key in ("channel_attention", "spatial_attention"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"dca '{key}' must be true or false, got {settings[key]!r}")
    temperature = settings["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"dca 'temperature' (where the learnable temperatures of cosine and qk_norm scores start) "
                         f"must be a positive number, got {temperature!r}; the default is {DEFAULTS['temperature']}")
    for key, choices in (("merge", MERGES), ("channel_scores", CHANNEL_SCORES), ("spatial_scores", SPATIAL_SCORES)):
        if settings[key] not in choices:
            raise ValueError(f"dca '{key}' must be one of {list(choices)}, got {settings[key]!r}; the default is "
                             f"{DEFAULTS[key]!r}")
    if not (settings["channel_attention"] or settings["spatial_attention"]):
        raise ValueError("dca 'channel_attention' and 'spatial_attention' are both false; keep at least one on "
                         "(for a U-Net without DCA, train the stock nnUNetTrainer)")

    # JSON gives lists; DCA takes tuples for per-axis and per-stage values
    kwargs = {key: tuple(value) if isinstance(value, list) else value
              for key, value in settings.items() if key != "stages"}
    return settings["stages"], kwargs


def resolved_dca_block(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """The validated block with every key, defaults filled in, as JSON values: what a model folder keeps, so that
    it builds the same network whatever the plans or the defaults later say."""
    stages, kwargs = parse_dca_block(block)
    return {"stages": stages, **{key: list(value) if isinstance(value, tuple) else value
                                 for key, value in kwargs.items()}}


def saved_dca_block(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """A block saved with a model (`dca_resolved`, or `arch_kwargs.dca` of a plans-only configuration), resolved
    as `resolved_dca_block` does, with `ADDED_LATER`'s values for the keys it predates: a block nnunet-dca wrote
    holds every key there was, so one holding every original key was written, and a missing later key was not yet
    there. A hand-written block that leaves original keys out takes the defaults."""
    written = isinstance(block, Mapping) and set(DEFAULTS) - set(ADDED_LATER) <= set(block)
    return resolved_dca_block({**ADDED_LATER, **block} if written else block)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_list_of_positive_ints(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_positive_int(v) for v in value)
