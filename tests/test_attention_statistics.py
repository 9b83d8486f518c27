"""nnunet_dca.attention.statistics against values computed by hand on small tensors."""

import math

import numpy as np
import pytest
import torch

from nnunet_dca.attention.statistics import (
    TARGETS,
    attention_rows,
    channel_rows,
    foreground_tokens,
    joined_rows,
    spatial_rows,
    summarize,
    target_checks,
)
from nnunet_dca.recording import StageRecord


def channel_weights(*rows: list[float]) -> torch.Tensor:
    """Channel attention of one head, (B=1, h=1, rows, length)."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_the_effective_channels_of_a_row_are_exp_of_its_entropy():
    numbers = channel_rows(channel_weights([1, 0, 0, 0], [0.25] * 4, [0.5, 0.25, 0.25, 0]))
    # one-hot: 1; uniform over 4: exp(ln 4) = 4; 0.5 ln 2 + 2 x 0.25 ln 4 = 1.5 ln 2
    np.testing.assert_allclose(numbers["effective"], [1, 4, math.exp(1.5 * math.log(2))], rtol=1e-6)
    np.testing.assert_allclose(numbers["max"], [1, 0.25, 0.5])


def test_a_one_hot_row_is_collapsed_and_a_half_is_not():
    rows = attention_rows([StageRecord(channel_attention=[channel_weights([1, 0, 0], [0.5, 0.5, 0])])])
    (stage,) = summarize([rows])
    channel = stage["blocks"][0]["channel"]
    assert channel["rows"] == 2 and channel["context_channels"] == 3
    assert channel["collapsed_share"] == 0.5  # only the one-hot row's largest probability exceeds 0.5
    assert channel["effective"]["median"] == pytest.approx(1.5)  # of 1 and 2
    assert "spatial" not in stage["blocks"][0]  # spatial attention off: an ablation


def test_channel_rows_of_every_head_count_and_c_sum_spans_the_heads():
    weights = torch.full((1, 2, 3, 4), 0.25)  # 2 heads, 3 rows each over 4 of C_sum = 8 channels
    (stage,) = summarize([attention_rows([StageRecord(channel_attention=[weights])])])
    channel = stage["blocks"][0]["channel"]
    assert channel["rows"] == 6 and channel["context_channels"] == 8 and channel["row_length"] == 4
    assert channel["effective"]["mean"] == pytest.approx(4)


def test_uniform_spatial_attention_has_entropy_ratio_one_and_max_times_n_one():
    numbers = spatial_rows(torch.full((1, 2, 6, 6), 1 / 6))
    assert numbers["entropy_ratio"].shape == (12,)  # every query row of every head
    np.testing.assert_allclose(numbers["entropy_ratio"], 1, rtol=1e-6)
    np.testing.assert_allclose(numbers["max_times_n"], 1, rtol=1e-6)
    one_hot = spatial_rows(torch.eye(4)[None, None])
    np.testing.assert_allclose(one_hot["entropy_ratio"], 0, atol=1e-12)
    np.testing.assert_allclose(one_hot["max_times_n"], 4)


def test_a_voxel_makes_foreground_every_token_whose_adaptive_pooling_window_holds_it():
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[0, 1, 3] = True  # windows of 2 x 2: token (0, 1)
    assert foreground_tokens(mask, (2, 3)).tolist() == [[False, True, False, False, False, False]]
    # 5 voxels to 2 tokens: adaptive windows [0, 3) and [2, 5) overlap at 2
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    assert foreground_tokens(mask, (2, 2)).tolist() == [[True, True, True, True]]
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 3, 0, 3] = True
    assert torch.nonzero(foreground_tokens(mask, (2, 2, 2))[0]).flatten().tolist() == [5]  # token (1, 0, 1)


def test_the_foreground_rows_are_the_rows_of_its_tokens_only():
    weights = torch.zeros(1, 1, 4, 4)  # a 2 x 2 grid; query row i attends uniformly to i + 1 tokens
    for row in range(4):
        weights[0, 0, row, :row + 1] = 1 / (row + 1)
    foreground = torch.zeros(1, 4, 4, dtype=torch.bool)
    foreground[0, 3, 1] = True  # the window of token (1, 0): row 2
    (blocks,) = attention_rows([StageRecord(spatial_attention=[weights])], foreground, (2, 2))
    np.testing.assert_allclose(blocks[0]["spatial"]["entropy_ratio"], [math.log(k) / math.log(4) for k in (1, 2, 3, 4)],
                               atol=1e-12)
    np.testing.assert_allclose(blocks[0]["spatial_foreground"]["entropy_ratio"], [math.log(3) / math.log(4)])
    np.testing.assert_allclose(blocks[0]["spatial_foreground"]["max_times_n"], [4 / 3])
    # no foreground token: no foreground rows, every token's rows as before
    (blocks,) = attention_rows([StageRecord(spatial_attention=[weights])], torch.zeros(1, 4, 4, dtype=torch.bool),
                               (2, 2))
    assert blocks[0]["spatial_foreground"] is None and blocks[0]["spatial"]["entropy_ratio"].size == 4


def test_a_summary_over_two_cases_counts_every_row_of_both():
    weights = torch.full((1, 1, 4, 4), 0.25)
    foreground = torch.zeros(1, 2, 2, dtype=torch.bool)
    foreground[0, 0, 0] = True
    first = attention_rows([StageRecord(channel_attention=[channel_weights([1, 0, 0], [1, 0, 0])],
                                        spatial_attention=[weights])], foreground, (2, 2))
    second = attention_rows([StageRecord(channel_attention=[channel_weights([1 / 3] * 3, [1 / 3] * 3, [1 / 3] * 3)],
                                         spatial_attention=[torch.eye(4)[None, None]])])  # no foreground given
    (stage,) = summarize([first, second])
    block = stage["blocks"][0]
    assert block["channel"]["rows"] == 5 and block["channel"]["collapsed_share"] == pytest.approx(2 / 5)
    assert block["channel"]["effective"]["median"] == pytest.approx(3)  # 1, 1, 3, 3, 3
    assert block["spatial"]["rows"] == 8 and block["spatial"]["tokens"] == 4
    assert block["spatial"]["entropy_ratio"]["mean"] == pytest.approx(0.5)  # four rows of 1, four of 0
    assert block["spatial"]["max_times_n"]["mean"] == pytest.approx(2.5)  # (4 x 1 + 4 x 4) / 8
    assert block["spatial"]["max_probability_mean"] == pytest.approx(2.5 / 4)
    assert block["spatial_foreground"]["rows"] == 1  # only the first case has a foreground token
    joined = joined_rows([first, second])[0][0]
    assert joined["channel"]["effective"].size == 5 and joined["spatial"]["entropy_ratio"].size == 8
    assert joined["spatial_foreground"]["entropy_ratio"].size == 1 and joined["channel_shape"] == (1, 3)


def crafted(collapsed: float, median: float, context: int, ratio: float, max_times_n: float, largest: float) -> list:
    return [{"stage": 0, "blocks": [{
        "block": 0,
        "channel": {"collapsed_share": collapsed, "effective": {"median": median}, "context_channels": context,
                    "row_length": context},
        "spatial": {"entropy_ratio": {"mean": ratio}, "max_times_n": {"mean": max_times_n},
                    "max_probability_mean": largest}}]}]


def test_target_checks_hold_a_summary_to_the_bounds():
    assert TARGETS["channel_effective_at_least"] == 3 and TARGETS["spatial_entropy_ratio_at_most"] == 0.95
    assert all(target_checks(crafted(0.05, 10, 64, 0.9, 2, 0.1)).values())
    checks = target_checks(crafted(0.2, 2, 64, 0.99, 1.5, 0.6))
    assert checks == {"channel_not_collapsed": False, "channel_not_uniform": False, "spatial_not_uniform": False,
                      "spatial_not_one_hot": False}
    assert not target_checks(crafted(0.05, 17, 64, 0.9, 2, 0.1))["channel_not_uniform"]  # above C_sum / 4 = 16
    # near-uniform entropy, but a peak N x 4 above uniform: not uniform
    assert target_checks(crafted(0.05, 10, 64, 0.99, 4, 0.1))["spatial_not_uniform"]
