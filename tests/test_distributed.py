"""DCA under data parallelism: two processes on the gloo backend, each with part of a batch, as one process with all.

nnU-Net trains on several GPUs with DDP and converts every BatchNorm to SyncBatchNorm first. DCA's training tail
normalizes by itself, so it has to synchronize its batch statistics itself, on any backend. nn.SyncBatchNorm runs
only on GPUs and DDP's wrapper refuses it on CPU, so the processes here convert the modules as nnU-Net does and
average the gradients with all_reduce as DDP does.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunet_dca import DCA

FEATURES = [8, 16, 32]
SIZES = [(24, 20), (12, 10), (6, 5)]
BATCH, STEPS = 4, 2
# each process's samples: equal shares, and unequal ones (nnU-Net splits a batch of 366 over 4 GPUs as 92, 92, 91, 91)
SPLITS = {"2+2": [slice(0, 2), slice(2, 4)], "3+1": [slice(0, 3), slice(3, 4)]}


def make_case(step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One step's skips and the weights of its loss, the whole batch, the same in every process."""
    generator = torch.Generator().manual_seed(step)
    skips = [torch.randn(BATCH, c, *s, generator=generator) for c, s in zip(FEATURES, SIZES)]
    loss_weights = [torch.randn(BATCH, c, *s, generator=generator) for c, s in zip(FEATURES, SIZES)]
    return skips, loss_weights


def make_dca() -> DCA:
    torch.manual_seed(0)
    return DCA(FEATURES, token_grid=(4, 3)).train()


def train_steps(dca: nn.Module, samples: slice, sample_weights: torch.Tensor) -> dict[str, list]:
    """Steps on the batch's `samples`, with a loss that weighs each sample's score by `sample_weights`."""
    record = {"outputs": [], "input_grads": [], "parameter_grads": []}
    for step in range(STEPS):
        skips, loss_weights = make_case(step)
        skips = [x[samples].requires_grad_() for x in skips]
        outputs = dca(skips)
        loss = sum(((o * w[samples]).flatten(1).sum(1) * sample_weights).sum() for o, w in zip(outputs, loss_weights))
        dca.zero_grad()
        loss.backward()
        parameter_grads = {name: p.grad.clone() for name, p in dca.named_parameters()}
        if dist.is_initialized():
            for grad in parameter_grads.values():  # DDP averages the processes' gradients
                dist.all_reduce(grad)
                grad /= dist.get_world_size()
        record["outputs"].append([o.detach() for o in outputs])
        record["input_grads"].append([x.grad for x in skips])
        record["parameter_grads"].append(parameter_grads)
    record["buffers"] = {name: b.clone() for name, b in dca.named_buffers()}
    return record


def shares(split: list[slice]) -> list[int]:
    return [s.stop - s.start for s in split]


def data_parallel_worker(rank: int, split_name: str, rendezvous: str, out: str) -> None:
    split = SPLITS[split_name]
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=len(split))
    try:
        dca = nn.SyncBatchNorm.convert_sync_batchnorm(make_dca())  # what nnUNetTrainer.initialize does under DDP
        # each process's loss is the mean over its own samples, as nnU-Net's losses are
        mean_weights = torch.full((shares(split)[rank],), 1 / shares(split)[rank])
        torch.save(train_steps(dca, split[rank], mean_weights), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=list(SPLITS))
def split_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def data_parallel(split_name: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    world_size = len(SPLITS[split_name])
    mp.spawn(data_parallel_worker, args=(split_name, str(folder / "rendezvous"), str(folder)), nprocs=world_size)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(world_size)]


@pytest.fixture(scope="module")
def one_process(split_name: str) -> dict:
    # what DDP optimizes: the average over processes of each one's mean loss, so each sample weighs
    # 1 / (processes x its process's share)
    split = SPLITS[split_name]
    sample_weights = torch.cat([torch.full((n,), 1 / (len(split) * n)) for n in shares(split)])
    return train_steps(make_dca(), slice(None), sample_weights)


def test_outputs_and_input_gradients_equal_one_process_on_the_whole_batch(split_name, data_parallel, one_process):
    world_size = len(data_parallel)
    for step in range(STEPS):
        for samples, record in zip(SPLITS[split_name], data_parallel):
            for output, expected in zip(record["outputs"][step], one_process["outputs"][step]):
                torch.testing.assert_close(output, expected[samples], atol=1e-5, rtol=1e-5)
            # a process's input gradient is that of the sum of all processes' losses, the objective times
            # the number of processes
            for grad, expected in zip(record["input_grads"][step], one_process["input_grads"][step]):
                torch.testing.assert_close(grad / world_size, expected[samples], atol=1e-5, rtol=1e-5)


def test_averaged_parameter_gradients_equal_one_process(data_parallel, one_process):
    for step in range(STEPS):
        expected = one_process["parameter_grads"][step]
        for record in data_parallel:
            assert record["parameter_grads"][step].keys() == expected.keys()
            for name, grad in record["parameter_grads"][step].items():
                # summed in another order: float32 round-off of gradients up to about 10
                torch.testing.assert_close(grad, expected[name], atol=1e-4, rtol=1e-4, msg=name)


def test_running_statistics_come_from_the_whole_batch(data_parallel, one_process):
    for record in data_parallel:
        for name, expected in one_process["buffers"].items():
            torch.testing.assert_close(record["buffers"][name], expected, atol=1e-6, rtol=1e-5, msg=name)
