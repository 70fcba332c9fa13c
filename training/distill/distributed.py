"""Data-parallel training across processes started by `torchrun` (one process when started by plain python).

Every process runs the same step on its own batch; gradients are averaged with one all-reduce per network and
step, so all processes keep identical weights. This is what DistributedDataParallel does, done by hand (as
StyleGAN2-ADA's and EG3D's training loops do) because a GAN step calls each network in several roles (the
discriminator with frozen weights inside the generator's step, the generator without gradients inside the
discriminator's), which DDP's per-forward hooks do not follow. Backend: nccl on GPUs, gloo on CPUs.
"""

import os

import torch
import torch.distributed as dist

from editkit.errors import EditkitError


class Distributed:
    """This process's rank, the world size and the device; collectives that are no-ops for a single process."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise EditkitError("--device cuda: no CUDA device is available (use --device cpu)")
        self.device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params) -> None:
        """Replace each parameter's gradient by its mean over the processes (a missing gradient counts as 0)."""
        if self.world == 1:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.average(grads)

    def average(self, tensors) -> None:
        """Average tensors in place over the processes (one all-reduce of their concatenation)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_module(self, module) -> None:
        """Give every process rank 0's parameters and buffers."""
        if self.world == 1 or module is None:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def decide(self, flag: bool) -> bool:
        """Rank 0's value of `flag`, on every process (for decisions that must agree, such as stopping)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group together: a process that tears gloo down while rank 0 is still exporting
        aborts ("terminate called without an active exception")."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
