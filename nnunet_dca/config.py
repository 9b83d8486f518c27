"""The optional `dca` block of a plans configuration: plans['configurations'][name]['dca'].

Every key is optional; the defaults follow the paper (DESIGN.md, "Defaults and why") except `merge`:

    "dca": {"stages": 4, "token_grid": null, "max_tokens": 1024, "n_blocks": 1, "channel_heads": 1,
            "spatial_heads": 4, "channel_attention": true, "spatial_attention": true, "merge": "residual"}

`merge` "residual" adds the refined skip's branch to the skip and starts it at zero, so the DCA U-Net starts as the
stock U-Net; "paper" is the paper's BatchNorm and ReLU of the sum (see nnunet_dca.dca.DCA). Blocks saved before
`merge` existed (a model folder's `dca_resolved`, a plans-only configuration's `arch_kwargs.dca`) mean "paper".
"""

from __future__ import annotations

from typing import Any, Mapping

# how DCA's refined skip joins the skip: see nnunet_dca.dca.DCA
MERGES = ("paper", "residual")

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
}
# what a saved block without `merge` was trained with: every model before the key existed used the paper's merge
SAVED_BEFORE_MERGE = {"merge": "paper"}


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
    if settings["merge"] not in MERGES:
        raise ValueError(f"dca 'merge' must be one of {list(MERGES)}, got {settings['merge']!r}; the default is "
                         f"{DEFAULTS['merge']!r}")
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
    as `resolved_dca_block` does, with the paper's merge where the block predates the `merge` key: every other key
    there, as nnunet-dca wrote them. A hand-written block that leaves keys out takes the defaults."""
    predates_merge = (isinstance(block, Mapping) and "merge" not in block
                      and set(DEFAULTS) - set(SAVED_BEFORE_MERGE) <= set(block))
    return resolved_dca_block({**SAVED_BEFORE_MERGE, **block} if predates_merge else block)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_list_of_positive_ints(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_positive_int(v) for v in value)
