"""DCA under data parallelism: two processes on the gloo backend, each with half a batch, as one process with all.

nnU-Net trains on several GPUs with DDP and converts every BatchNorm to SyncBatchNorm first. DCA's training tail
normalizes by itself, so it has to synchronize its batch statistics itself, on any backend. nn.SyncBatchNorm runs
only on GPUs and DDP's wrapper refuses it on CPU, so the processes here convert the modules as nnU-Net does and
average the gradients with all_reduce as DDP does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunet_dca import DCA

FEATURES = [8, 16, 32]
SIZES = [(24, 20), (12, 10), (6, 5)]
BATCH, WORLD_SIZE, STEPS = 4, 2, 2


def make_case(step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One step's skips and the weights of its loss, the whole batch, the same in every process."""
    generator = torch.Generator().manual_seed(step)
    skips = [torch.randn(BATCH, c, *s, generator=generator) for c, s in zip(FEATURES, SIZES)]
    loss_weights = [torch.randn(BATCH, c, *s, generator=generator) for c, s in zip(FEATURES, SIZES)]
    return skips, loss_weights


def make_dca() -> DCA:
    torch.manual_seed(0)
    return DCA(FEATURES, token_grid=(4, 3)).train()


def train_steps(dca: nn.Module, samples: slice) -> dict[str, list]:
    """Steps on the batch's `samples`; each loss is a mean over the samples it sees, as nnU-Net's losses are."""
    record = {"outputs": [], "input_grads": [], "parameter_grads": []}
    for step in range(STEPS):
        skips, loss_weights = make_case(step)
        skips = [x[samples].requires_grad_() for x in skips]
        outputs = dca(skips)
        loss = sum((o * w[samples]).flatten(1).sum(1).mean() for o, w in zip(outputs, loss_weights))
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


def data_parallel_worker(rank: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        dca = nn.SyncBatchNorm.convert_sync_batchnorm(make_dca())  # what nnUNetTrainer.initialize does under DDP
        share = BATCH // WORLD_SIZE
        torch.save(train_steps(dca, slice(rank * share, (rank + 1) * share)), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(data_parallel_worker, args=(str(folder / "rendezvous"), str(folder)), nprocs=WORLD_SIZE)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    return train_steps(make_dca(), slice(None))


def test_outputs_and_input_gradients_equal_one_process_on_the_whole_batch(data_parallel, one_process):
    share = BATCH // WORLD_SIZE
    for step in range(STEPS):
        for rank, record in enumerate(data_parallel):
            samples = slice(rank * share, (rank + 1) * share)
            for output, expected in zip(record["outputs"][step], one_process["outputs"][step]):
                torch.testing.assert_close(output, expected[samples], atol=1e-5, rtol=1e-5)
            # each process's loss is a mean over half the batch: twice the weight of the whole batch's mean
            for grad, expected in zip(record["input_grads"][step], one_process["input_grads"][step]):
                torch.testing.assert_close(grad / WORLD_SIZE, expected[samples], atol=1e-5, rtol=1e-5)


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
