"""Self-describing, atomic, verifiable training checkpoints, and the final consolidated export.

Layout of one checkpoint, ``<out_dir>/checkpoints/step-00001000/``:

    model.pt, optimizer.pt      single device / DDP (rank 0 writes; DDP replicas are identical)
    dcp/                        FSDP: sharded model + optimizer via torch.distributed.checkpoint,
                                each rank writes its own shard, loadable at another world size
    rng-rank00000.pt ...        per-rank RNG states (python, numpy, torch, cuda) as tensors/lists
    trainer_state.json          `trainer.state.TrainState`: step, tokens seen, val losses, loader position
    config.json                 the run's full config (any recipe's) minus host paths, and the resolved ModelConfig
    manifest.json               sha256 + size of every file above, written last
    run.json                    run log, not in the manifest: wall time so far and the run's host paths

Everything but ``run.json`` is a pure function of the config and the data: two runs of one
config, in any directories, on any day, write byte-identical checkpoints (`seed_all` seeds
every RNG whose state is saved, so none starts from OS entropy). ``run.json`` holds what
differs between such runs; a missing or garbled one only restarts the wall clock.

Everything is written into a hidden ``.tmp-step-…`` directory that is renamed into
place only after its files are fsynced and the manifest is in it, so a checkpoint
counts only once its manifest exists (torchtitan's rule). A save has two halves:
`capture_checkpoint` copies the state into host buffers at the save step
(`trainer.staging`), `write_checkpoint` serializes those copies; the loop runs the
second in a background thread (``checkpoint.async_save``), and the bytes are the same.
Loading verifies the sha256s; a corrupt newest checkpoint is reported by name and the
previous good one is used. All ``.pt`` files load with ``torch.load(weights_only=True)``:
nothing but tensors and plain containers.

``final/`` holds consolidated weights (``model.safetensors``; ``model.pt`` is still read
from artifacts of older Kiln versions) plus ``config.json`` (ModelConfig): enough to generate
or convert without the trainer's state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from safetensors.torch import save_file
from torch import nn

from kiln.config import to_dict
from model import Llama, ModelConfig
from model.hf_interop import build_llama, load_weights
from model.integrity import write_checksums
from storage.atomic import atomic_write_text
from storage.local import sha256_file
from trainer.config import split_host_paths
from trainer.parallelize import DistEnv
from trainer.staging import HostStager, Snapshot
from trainer.state import LOG_FIELDS

log = logging.getLogger("trainer")

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.json"
RUN_LOG = "run.json"
PREFIX = "step-"


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"{PREFIX}{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Completed checkpoint directories (manifest present), oldest first. Hashes are not checked."""
    root = Path(out_dir) / CHECKPOINTS
    found = [p for p in root.glob(f"{PREFIX}*") if (p / MANIFEST).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


# -- RNG state as weights_only-loadable data -----------------------------------------------------
def seed_all(seed: int) -> None:
    """Seed every RNG whose state a checkpoint saves: Python's and numpy's global ones (which
    otherwise start from OS entropy in each process, so their saved states would differ between
    two runs of one config) and torch's (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (name, key array, pos, has_gauss, cached_gaussian)
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np_state
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "key": torch.from_numpy(np.asarray(np_key).astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- save -------------------------------------------------------------------------------------
def save_pt(obj: Any, path: str | Path) -> None:
    """`torch.save` through an open file: the zip's records are then named ``archive/...``. Given a
    path, torch names them after the file, so a temporary name (`storage.atomic.atomic_path`'s are
    random) would make the same tensors different bytes."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


@dataclass
class SaveJob:
    """A checkpoint captured at its step (`capture_checkpoint`): what `write_checkpoint` needs, and nothing that
    training goes on changing, so the write may run in another thread while the next steps train."""

    tmp: Path
    final: Path
    step: int
    tensors: Snapshot | None
    """Host copies of ``{"model", "optim"}`` state dicts (every FSDP rank's shards; only rank 0's otherwise)."""
    sharded: bool
    """FSDP: written with `torch.distributed.checkpoint` (collective) into ``dcp/``."""
    files: dict[str, str]
    """Rank 0's small files by name (trainer state, configs, run log), already rendered."""
    val_loss: float | None


def capture_checkpoint(out_dir: str | Path, step: int, *, model: nn.Module, raw: Llama,
                       optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any], cfg: Any,
                       model_cfg: ModelConfig, dist: DistEnv, stager: HostStager, val_loss: float | None = None,
                       run_log: dict[str, Any] | None = None) -> SaveJob:
    """The part of a save that must happen at step `step` (collective): the temporary directory, this rank's
    RNG file, and the model and optimizer state queued for copying into `stager`'s host buffers."""
    final = checkpoint_path(out_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    tensors = None
    if dist.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        tensors = stager.stage({"model": model_sd, "optim": optim_sd})
    elif dist.is_main:  # DDP replicas are identical: rank 0 saves for all
        tensors = stager.stage({"model": raw.state_dict(), "optim": optimizer.state_dict()})
    save_pt(rng_state(), tmp / f"rng-rank{dist.rank:05d}.pt")
    dist.barrier()  # every rank's RNG file is in place before rank 0 can write the manifest
    files = {}
    if dist.is_main:
        train_cfg, paths = split_host_paths(cfg) if dataclasses.is_dataclass(cfg) else (to_dict(cfg), {})
        files = {STATE_FILE: json.dumps({**trainer_state, "scheduler": {"step": step}}, indent=2),
                 "config.json": json.dumps({"train": train_cfg, "model": dataclasses.asdict(model_cfg)}, indent=2),
                 RUN_LOG: json.dumps({**(run_log or {}), "paths": paths}, indent=2)}
    return SaveJob(tmp, final, step, tensors, dist.mode == "fsdp", files, val_loss)


def write_checkpoint(job: SaveJob, dist: DistEnv, process_group: Any = None) -> Path:
    """Serialize a captured checkpoint, fsync it and rename it into place (rank 0). Under FSDP every rank
    must call it (``torch.distributed.checkpoint`` is collective: over `process_group`, default the world);
    otherwise only rank 0 has work. Safe in a background thread."""
    if job.tensors is not None:
        job.tensors.wait()
        if job.sharded:
            from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

            # Returns on every rank only after rank 0 has written .metadata, i.e. after all shards are written.
            dcp_save(job.tensors.tree, checkpoint_id=str(job.tmp / "dcp"), process_group=process_group)
        elif dist.is_main:
            save_pt(job.tensors.tree["model"], job.tmp / "model.pt")
            save_pt(job.tensors.tree["optim"], job.tmp / "optimizer.pt")
    if dist.is_main:
        for name, text in job.files.items():
            (job.tmp / name).write_text(text)
        _fsync_tree(job.tmp)  # every file is on disk before the manifest that vouches for it
        _write_manifest(job.tmp, job.step, job.val_loss)
        if job.final.exists():  # left by an attempt that went further before a crash: superseded
            shutil.rmtree(job.final)
        _fsync_dir(job.tmp)
        job.tmp.rename(job.final)
        _fsync_dir(job.final.parent)
    return job.final


def save_checkpoint(out_dir: str | Path, step: int, *, model: nn.Module, raw: Llama, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], cfg: Any, model_cfg: ModelConfig, dist: DistEnv,
                    val_loss: float | None = None, run_log: dict[str, Any] | None = None,
                    stager: HostStager | None = None) -> Path:
    """Write checkpoint `step` atomically, here and now (collective: every rank must call it). Returns its path.

    `trainer_state` is `trainer.state.TrainState.content_dict()`; `cfg` the run's whole config
    dataclass (any recipe's), saved beside the weights without its host paths, which go to
    ``run.json`` with `run_log` (`TrainState.log_dict()`: the wall clock). The loop's
    `Checkpointer` runs the same two halves, `write_checkpoint` maybe in a background thread.
    """
    job = capture_checkpoint(out_dir, step, model=model, raw=raw, optimizer=optimizer, trainer_state=trainer_state,
                             cfg=cfg, model_cfg=model_cfg, dist=dist, stager=stager or HostStager(dist.device),
                             val_loss=val_loss, run_log=run_log)
    final = write_checkpoint(job, dist)
    dist.barrier()
    return final


def _fsync_tree(directory: Path) -> None:
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a rename or new entry in `directory` durable (directories cannot be opened for writing)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(directory: Path, step: int, val_loss: float | None) -> None:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, RUN_LOG)
    }
    atomic_write_text(directory / MANIFEST, json.dumps({"step": step, "val_loss": val_loss, "files": files},
                                                       indent=2))


# -- find and verify --------------------------------------------------------------------------
def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` is unusable (missing file, size or sha256 mismatch), or None if it is good."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable manifest ({exc})"
    for rel, meta in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
            return f"{rel} does not match its sha256 in the manifest"
    return None


def latest_valid_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files all match their manifest; corrupt newer ones are warned about."""
    for path in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is corrupt (%s); falling back to the previous checkpoint", path, problem)
    return None


def find_resume_point(out_dir: Path, dist: DistEnv) -> Path | None:
    """Rank 0 picks the newest valid checkpoint (quarantining corrupt newer ones); all ranks agree."""
    choice: list[Any] = [None]
    if dist.is_main:
        path = latest_valid_checkpoint(out_dir)
        for newer in list_checkpoints(out_dir):
            if path is None or step_of(newer) > step_of(path):
                aside = newer.with_name(f"corrupt-{newer.name}")  # kept for inspection, never loaded
                shutil.rmtree(aside, ignore_errors=True)
                newer.rename(aside)
                log.warning("moved corrupt checkpoint %s aside to %s", newer, aside)
        choice[0] = str(path) if path else None
    if dist.initialized:
        tdist.broadcast_object_list(choice, src=0)
    return Path(choice[0]) if choice[0] else None


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep_best: bool) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (and the best by val loss). Returns the deleted."""
    paths = list_checkpoints(out_dir)
    keep = set(paths[-keep_last:]) if keep_last > 0 else set()
    if keep_best:
        scored = [(json.loads((p / MANIFEST).read_text()).get("val_loss"), p) for p in paths]
        scored = [(v, p) for v, p in scored if v is not None]
        if scored:
            keep.add(min(scored, key=lambda vp: (vp[0], -step_of(vp[1])))[1])
    doomed = [p for p in paths if p not in keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    for stale in (Path(out_dir) / CHECKPOINTS).glob(".tmp-*"):  # a save killed before its rename
        shutil.rmtree(stale, ignore_errors=True)
    return doomed


# -- load -------------------------------------------------------------------------------------
def load_checkpoint(path: Path, *, model: nn.Module, raw: Llama, optimizer: torch.optim.Optimizer,
                    dist: DistEnv) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from `path`; returns the trainer state."""
    if (path / "dcp").is_dir():
        if dist.mode != "fsdp":
            raise _mode_error(path, "FSDP", dist.mode)
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp_load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    else:
        if dist.mode == "fsdp":
            raise _mode_error(path, "single-device/DDP", dist.mode)
        raw.load_state_dict(torch.load(path / "model.pt", map_location=dist.device, weights_only=True))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=dist.device, weights_only=True))
    rng_file = path / f"rng-rank{dist.rank:05d}.pt"
    if not rng_file.is_file():  # resumed with more ranks than saved: reuse rank 0's stream
        rng_file = path / "rng-rank00000.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return {**_run_log_fields(path), **json.loads((path / STATE_FILE).read_text())}


def _run_log_fields(path: Path) -> dict[str, Any]:
    """The trainer-state fields kept in ``run.json`` (elapsed time); {} if it is missing or garbled
    (checkpoints of older Kiln versions have them in ``trainer_state.json`` instead)."""
    try:
        saved = json.loads((path / RUN_LOG).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); the run's wall clock restarts from 0", path / RUN_LOG, exc)
        return {}
    if not isinstance(saved, dict):
        return {}
    return {k: float(saved[k]) for k in LOG_FIELDS if isinstance(saved.get(k), (int, float))}


def _mode_error(path: Path, saved: str, now: str) -> Exception:
    from kiln.errors import KilnError

    return KilnError(f"{path}: checkpoint was saved by a {saved} run but this run is parallel={now}; "
                     f"resume with the same kind of parallelism (or export it and start a new run)")


# -- final export -----------------------------------------------------------------------------
def full_state_dict(model: nn.Module, raw: Llama, dist: DistEnv) -> dict[str, Any]:
    """Unsharded weights on CPU (collective under FSDP; only rank 0 gets them there)."""
    if dist.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in raw.state_dict().items()}


def export_final(state_dict: dict[str, torch.Tensor], model_cfg: ModelConfig, final_dir: str | Path, *,
                 dtype: str = "float32", extra: dict[str, Any] | None = None) -> Path:
    """Write consolidated weights + ``config.json`` to `final_dir` (via a temp dir + rename)."""
    final = Path(final_dir)
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tensors = {k: v.to(torch_dtype) for k, v in state_dict.items()}
    # safetensors (a core dependency: the artifact must not depend on what else is installed)
    # refuses aliased tensors (tied embedding/head): store each as its own copy.
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(model_cfg), indent=2))
    if extra:
        (tmp / "export.json").write_text(json.dumps({"dtype": dtype, **extra}, indent=2))
    write_checksums(tmp, [p.name for p in tmp.iterdir()])  # verified by every load (model.integrity)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_final(final_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Llama, ModelConfig]:
    """The exported model ready for inference (eval mode), and its config (`model.hf_interop` reads both layouts)."""
    state, model_cfg = load_weights(final_dir)
    return build_llama(state, model_cfg, device=device, dtype=dtype), model_cfg
