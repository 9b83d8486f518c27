"""DCARecorder: what DCA computes, recorded without changing it, against the naive formulation."""

import copy

import pytest
import torch

from nnunet_dca import DCA
from nnunet_dca.naive import NaiveDCA
from nnunet_dca.recording import DCARecorder
from test_dca import assert_lists_close, dca_matching, grow_branches, ladder, skips_for

FEATURES = [8, 16, 32]
CASES = {2: ((6, 5), (37, 29)), 3: ((3, 4, 5), (12, 15, 19))}  # token grid, top skip size


def matched_pair(dims: int, merge: str, fused: bool, n_blocks: int = 1) -> tuple[NaiveDCA, DCA, list[torch.Tensor]]:
    torch.manual_seed(0)
    grid, top = CASES[dims]
    naive = grow_branches(NaiveDCA(FEATURES, token_grid=grid, spatial_dims=dims, merge=merge, n_blocks=n_blocks))
    dca = dca_matching(naive, token_grid=grid, merge=merge, fused_attention=fused, n_blocks=n_blocks)
    return naive, dca, skips_for(FEATURES, ladder(top, 3, dims))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("merge", ["paper", "residual"])
@pytest.mark.parametrize("dims", [2, 3])
def test_recorded_attention_equals_the_naive_formulations(dims, merge, fused):
    naive, dca, skips = matched_pair(dims, merge, fused, n_blocks=2)
    naive(skips)
    with DCARecorder(dca) as recorder:
        dca(skips)
    for kind in ("channel", "spatial"):
        assert [len(getattr(stage, f"{kind}_attention")) for stage in recorder.stages] == [2] * len(FEATURES)
        for block, expected in enumerate(naive.attention_weights[kind]):
            recorded = [getattr(stage, f"{kind}_attention")[block] for stage in recorder.stages]
            assert_lists_close(recorded, expected)
            for weights in recorded:
                torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("channel_scores, spatial_scores", [("cosine", "qk_norm"), ("standardized", "paper"),
                                                            ("qk_norm", "qk_norm")])
def test_recorded_attention_of_each_score_normalization_equals_the_naive_formulations(channel_scores, spatial_scores):
    torch.manual_seed(0)
    grid, top = CASES[2]
    options = dict(merge="residual", channel_scores=channel_scores, spatial_scores=spatial_scores)
    naive = grow_branches(NaiveDCA(FEATURES, token_grid=grid, **options))
    dca = dca_matching(naive, token_grid=grid, **options)
    skips = skips_for(FEATURES, ladder(top, 3, 2))
    naive(skips)
    with DCARecorder(dca) as recorder:
        dca(skips)
    for kind in ("channel", "spatial"):
        recorded = [getattr(stage, f"{kind}_attention")[0] for stage in recorder.stages]
        assert_lists_close(recorded, naive.attention_weights[kind][0])


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("merge", ["paper", "residual"])
def test_recording_changes_neither_outputs_nor_state(merge, train):
    _, dca, skips = matched_pair(2, merge, fused=True)
    dca.train(train)
    untouched = copy.deepcopy(dca)
    with DCARecorder(dca):
        outs = dca(skips)
    expected = untouched(skips)
    assert all(torch.equal(o, e) for o, e in zip(outs, expected))
    for (name, value), other in zip(dca.state_dict().items(), untouched.state_dict().values()):
        assert torch.equal(value, other), name


@pytest.mark.parametrize("merge", ["paper", "residual"])
def test_skips_branches_and_refined_skips_are_recorded(merge):
    naive, dca, skips = matched_pair(2, merge, fused=True)
    dca.eval()
    with DCARecorder(dca) as recorder:
        outs = dca(skips)
    for stage, (record, skip, out) in enumerate(zip(recorder.stages, skips, outs)):
        assert torch.equal(record.skip, skip) and torch.equal(record.refined, out)
        assert record.branch.shape == skip.shape
        merged = skip + record.branch
        if merge == "paper":
            merged = torch.relu(dca.output_norms[stage](merged))
        torch.testing.assert_close(record.refined, merged, atol=1e-5, rtol=1e-5)


def test_only_the_last_call_is_kept_and_the_hooks_go_on_exit():
    _, dca, skips = matched_pair(2, "residual", fused=True)
    with DCARecorder(dca) as recorder:
        dca(skips)
        dca([x[:1] for x in skips])
    assert all(record.skip.shape[0] == 1 and len(record.channel_attention) == 1 for record in recorder.stages)
    modules = [dca, *dca.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def test_a_module_that_is_not_dca_is_refused_by_name():
    with pytest.raises(TypeError, match="DCARecorder records a DCA module"):
        DCARecorder(torch.nn.Linear(2, 2))
