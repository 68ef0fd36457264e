"""Host copies of training state for an asynchronous checkpoint: the only part of a save the loop waits for.

    stager = HostStager(device)
    snap = stager.stage({"model": model_sd, "optim": optim_sd})   # queues device-to-host copies, returns at once
    stager.guard()        # before anything writes the state in place again (the optimizer step)
    snap.wait()           # in the writer thread: the copies have landed; `snap.tree` is safe to serialize

Buffers are kept and reused from one save to the next (one save is in flight at a
time, so a buffer is never written while the previous save still reads it), so only
the first save allocates; on CUDA they are page-locked, which is what lets the copy
run on the copy engine of a side stream while the next step's forward and backward
run. Nothing changes the state in place before the optimizer step, so `guard` (an
optimizer step pre-hook) makes that step's stream wait for the copies: the copies
overlap compute, and the state they read is exactly the state at the save step.

Each tensor's whole storage is copied and the copy viewed with the same offset, size
and stride, and tensors sharing a storage (a tied embedding and output head) share
the copy: ``torch.save`` writes storages, so the bytes on disk are exactly those of
saving the live tensors. A tensor subclass that wraps others (a DTensor: FSDP's shards)
is staged through its inner tensors and rebuilt with `__tensor_unflatten__`, as
torch.compile does: same spec and mesh, all that `torch.distributed.checkpoint` reads.
"""

from __future__ import annotations

import copy as copy_module
import logging
import time
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

log = logging.getLogger("trainer")


class Snapshot:
    """A staged copy of a state tree; `wait` before reading its tensors."""

    def __init__(self, tree: Any, nbytes: int, event: torch.cuda.Event | None, sources: Any) -> None:
        self.tree, self.nbytes = tree, nbytes
        self._event, self._sources = event, sources  # sources stay alive until their copies are done
        self.ready_at = time.perf_counter()
        """`time.perf_counter()` when the copies were done (on CUDA: known after `wait`)."""

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
            self.ready_at = time.perf_counter()
        self._event = self._sources = None


class HostStager:
    """Copies state trees (dicts, lists, tuples of tensors, DTensors and plain values) into reused host buffers."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}  # uint8, one per storage, by path in the tree
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._pending: torch.cuda.Event | None = None
        self._pin_failed = False

    def reserve(self, tree: Any) -> None:
        """Allocate (and page-lock) the buffers `tree` will need, copying nothing: page-locking gigabytes takes
        seconds, which the first save would otherwise spend with the loop waiting. Safe in another thread."""
        self._walk(tree, (), {}, [0], copy=False)

    def stage(self, tree: Any) -> Snapshot:
        """Queue the copies of `tree` (on CUDA, behind the work queued so far) and return its snapshot."""
        nbytes = [0]
        if self._stream is None:
            return Snapshot(self._walk(tree, (), {}, nbytes, copy=True), nbytes[0], None, None)
        self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        with torch.cuda.stream(self._stream):
            staged = self._walk(tree, (), {}, nbytes, copy=True)
        event = torch.cuda.Event()
        event.record(self._stream)
        self._pending = event
        return Snapshot(staged, nbytes[0], event, tree)

    def guard(self) -> None:
        """Make the current stream wait for the copies in flight (a no-op when none are, and on CPU). Once one
        wait is queued, everything queued after it is ordered after the copies too."""
        if self._pending is not None:
            torch.cuda.current_stream().wait_event(self._pending)
            self._pending = None

    def close(self) -> None:
        """Unpin and drop the buffers."""
        for buffer in self._buffers.values():
            self._unpin(buffer)
        self._buffers.clear()

    def _walk(self, obj: Any, path: tuple[Any, ...], memo: dict[Any, Any], nbytes: list[int], *, copy: bool) -> Any:
        """`obj` with every tensor replaced by its staged copy. An object reached twice (the `betas` tuple that
        param groups share) is copied once, so pickle writes the same references, hence the same bytes."""
        if isinstance(obj, torch.Tensor) and is_traceable_wrapper_subclass(obj):
            # DTensor (FSDP's shards), torchao's float8 weights: stage the tensors inside, rewrap the same way.
            if id(obj) in memo:
                return memo[id(obj)]
            names, context = obj.__tensor_flatten__()  # type: ignore[attr-defined]
            inner = {n: self._walk(getattr(obj, n), (*path, n), memo, nbytes, copy=copy) for n in names}
            memo[id(obj)] = type(obj).__tensor_unflatten__(inner, context, obj.size(), obj.stride())  # type: ignore
            return memo[id(obj)]
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, path, memo, nbytes, copy=copy)
        if not isinstance(obj, (dict, list, tuple)):
            return obj  # ints, floats, strings, None: immutable
        if id(obj) in memo:
            return memo[id(obj)]
        if isinstance(obj, dict):  # copy.copy keeps the class and attributes (a state_dict's `_metadata`)
            out = copy_module.copy(obj)
            for k, v in obj.items():
                out[k] = self._walk(v, (*path, k), memo, nbytes, copy=copy)
        else:
            items = [self._walk(v, (*path, i), memo, nbytes, copy=copy) for i, v in enumerate(obj)]
            unchanged = isinstance(obj, tuple) and all(a is b for a, b in zip(items, obj, strict=True))
            out = obj if unchanged else items if isinstance(obj, list) else tuple(items)
        memo[id(obj)] = out
        return out

    def _tensor(self, t: torch.Tensor, path: tuple[Any, ...], memo: dict[Any, Any],
                nbytes: list[int], *, copy: bool) -> torch.Tensor:
        if id(t) in memo:  # the same tensor object twice: pickle writes one reference to it
            return memo[id(t)]
        src = t.detach().untyped_storage()
        key = ("storage", src.device, src.data_ptr())  # apart from the id()s of containers in the same memo
        if key not in memo:  # the first tensor on this storage (later ones are views of it)
            host = self._buffer(path, src.nbytes())
            if copy:  # asynchronous only into page-locked memory (into pageable memory CUDA copies block anyway)
                src_bytes = torch.empty(0, dtype=torch.uint8, device=src.device).set_(src)
                host.copy_(src_bytes, non_blocking=src.device.type == "cuda" and host.is_pinned())
            memo[key] = host.untyped_storage()
            nbytes[0] += src.nbytes()
        view = torch.empty(0, dtype=t.dtype)
        view.set_(memo[key], t.storage_offset(), t.size(), t.stride())
        memo[id(t)] = view
        return view

    def _buffer(self, path: tuple[Any, ...], size: int) -> torch.Tensor:
        buffer = self._buffers.get(path)
        if buffer is None or buffer.numel() != size:
            if buffer is not None:
                self._unpin(buffer)
            start = time.perf_counter()
            buffer = torch.empty(size, dtype=torch.uint8)
            if self.cuda and size:
                self._pin(buffer)  # page-locking faults every page in
            else:
                buffer.zero_()  # fault the pages in now, not during the first copy
            self._buffers[path] = buffer
            if time.perf_counter() - start > 0.5:
                log.info("checkpoint staging: a %.2f GB host buffer took %.1fs to allocate (once per run)",
                         size / 1e9, time.perf_counter() - start)
        return buffer

    def _pin(self, buffer: torch.Tensor) -> None:
        """Page-lock in place (cudaHostRegister) at the exact size: the pinned caching allocator rounds each
        block up to a power of two, up to twice a large model's state in host memory."""
        if self._pin_failed:
            return
        err = _cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 1)  # 1: cudaHostRegisterPortable
        if int(err) != 0:  # e.g. more than the host can lock: copies still work, only synchronously
            self._pin_failed = True
            log.warning("checkpoint staging: cannot page-lock host buffers (cudaHostRegister error %s); the "
                        "device-to-host copies use pageable memory and the loop waits for them", err)

    def _unpin(self, buffer: torch.Tensor) -> None:
        if self.cuda and buffer.numel() and buffer.is_pinned():
            _cudart().cudaHostUnregister(buffer.data_ptr())


def _cudart() -> Any:
    return torch.cuda.cudart()  # typed Optional (None without CUDA); only called on CUDA
