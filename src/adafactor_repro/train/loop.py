"""train(cfg): the training loop (docs/architecture.md, "train"; docs/training.md for the behaviour)."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import TokenBatchSampler, TranslationDataset, collate, load_meta, load_tokenizer, prepare
from ..model import Transformer, TransformerConfig
from ..optim import optimizer_state_breakdown, optimizer_state_bytes
from . import distributed as D
from .checkpoint import find_resume_checkpoint, git_commit, rng_state, save_checkpoint, set_rng_state
from .evaluation import evaluate_bleu
from .loss import label_smoothed_nll_loss
from .metrics import MetricsLogger, atomic_write_json, atomic_write_text
from .perf import peak_flops, peak_memory_bytes
from .step import to_device, train_step

SUMMARY = "summary.json"


class Diverged(RuntimeError):
    pass


def _hydra_choice(cfg: DictConfig, group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except Exception:  # train(cfg) called outside @hydra.main (a notebook): infer what we can
        if group == "schedule":
            return "warmup" if cfg.schedule.get("linear_warmup", True) else "no_warmup"
        if group == "scale":
            return cfg.get("scale_name")
        return None


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, interpolations resolved, without Hydra's own `hydra` node."""
    out = {}
    for k in cfg:
        if k == "hydra":
            continue
        v = cfg[k]
        out[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return out


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision in (None, "auto"):
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ValueError(f"trainer.precision={precision!r}: use auto, bf16 or fp32")


def _read_summary(run_dir: Path) -> dict | None:
    p = run_dir / SUMMARY
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _epoch_batches(sampler, dataset, pad_id, bos_id, eos_id):
    """(epoch, batch) forever, epoch after epoch; the sampler resumes mid-epoch from its state."""
    while True:
        epoch = sampler.state_dict()["epoch"]
        if sampler.state_dict()["position"] >= len(sampler):  # saved right after an epoch's last batch
            epoch += 1
            sampler.set_epoch(epoch)
        for idx in sampler:
            yield epoch, collate([dataset[i] for i in idx], pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        sampler.set_epoch(epoch + 1)


@torch.no_grad()
def validate(model, dataset, sampler, *, device, autocast_dtype, label_smoothing, tok) -> dict[str, float]:
    """Per-token smoothed loss and NLL (nats) over this split, summed over ranks; ppl = exp(nll)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for idx in sampler:
        b = to_device(collate([dataset[i] for i in idx], pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id), device)
        mask = b["target"].ne(tok.pad_id)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(b["src_tokens"], b["prev_output_tokens"], output_mask=mask)
        loss, nll = label_smoothed_nll_loss(logits, b["target"][mask], label_smoothing, tok.pad_id)
        sums += torch.stack((loss.detach().double(), nll.double(), torch.tensor(float(b["ntokens"]), device=device, dtype=torch.float64)))
    D.all_reduce_sum(sums)
    model.train(was_training)
    loss, nll, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "nll": nll / n, "ppl": math.exp(min(nll / n, 100.0)), "ntokens": int(n)}


class _StopFlag:
    """SIGTERM/SIGUSR1 (SLURM preemption, scancel): finish the update, save checkpoint_last.pt, exit."""

    def __init__(self):
        self.set = False
        self._old = {}
        for s in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        self.set = True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run configured by `cfg`; returns its summary (summary.json's content)."""
    t = cfg.trainer
    dist = D.init_distributed(t.device)
    device, main = dist.device, dist.is_main
    if t.get("num_threads"):
        torch.set_num_threads(int(t.num_threads))
    run_dir = Path(cfg.run_dir)
    prev = _read_summary(run_dir)
    if prev and (prev.get("status") == "diverged"
                 or (prev.get("status") == "completed" and int(prev.get("updates", 0)) >= int(t.max_update))):
        if main:
            print(f"{run_dir}: already {prev['status']} at update {prev.get('updates')}; not retraining "
                  f"(delete the directory, or raise trainer.max_update to continue a completed run)", flush=True)
        D.cleanup()
        return prev

    # ------------------------------------------------------------------ data (rank 0 builds, others reuse)
    if main:
        data_dir = prepare(cfg.data)
    D.barrier()
    if not main:
        data_dir = prepare(cfg.data)
    data_dir = Path(data_dir).resolve()  # absolute in the checkpoint: evaluate.py may run from elsewhere
    tok = load_tokenizer(data_dir)
    train_set = TranslationDataset(data_dir, "train")
    valid_set = TranslationDataset(data_dir, "valid")
    sampler = TokenBatchSampler(train_set.src_lengths, train_set.tgt_lengths, int(t.max_tokens), seed=int(t.seed),
                                shuffle=True, num_replicas=dist.world_size, rank=dist.rank)
    valid_sampler = TokenBatchSampler(valid_set.src_lengths, valid_set.tgt_lengths, int(t.max_tokens), seed=int(t.seed),
                                      shuffle=False, num_replicas=dist.world_size, rank=dist.rank)

    # ------------------------------------------------------------------ model, optimizer, schedule
    torch.manual_seed(int(t.seed))
    model_args = dict(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    raw_model = Transformer(TransformerConfig(**model_args)).to(device)
    optimizer = instantiate(cfg.optim)(raw_model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, instantiate(cfg.schedule))
    # dropout streams differ per rank; reseeding on rank 0 too keeps 1-process runs = rank 0 of N
    torch.manual_seed(int(t.seed) + dist.rank)

    num_updates, best_valid = 0, math.inf
    counters = {"nonfinite_total": 0, "nonfinite_consecutive": 0, "train_tokens": 0, "train_time_s": 0.0,
                "wall_time_s": 0.0}
    resumed = find_resume_checkpoint(run_dir) if main else None
    resumed_path = D.broadcast_object(str(resumed[1]) if resumed else None)
    if resumed_path and not main:
        resumed = find_resume_checkpoint(run_dir)  # every rank reads the file rank 0 found usable
    if resumed:
        state, path = resumed
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) != dist.world_size and main:
            logger_warning = (f"{path} was written by {len(rngs)} process(es), this run has {dist.world_size}: "
                              "RNG streams restart from rank 0's, so the resumed run is not bit-identical")
            print(logger_warning, flush=True)
        set_rng_state(rngs[dist.rank % len(rngs)])
        num_updates = int(state["update"])
        best_valid = float(state.get("best_valid_loss", math.inf))
        counters.update({k: state["counters"][k] for k in counters if k in state.get("counters", {})})
        del state
    resolved = resolved_config(cfg)
    # Which built data this run saw: the artifact's cache key and the sentencepiece model's sha256.
    meta = load_meta(data_dir)
    resolved["data_artifact"] = {"dir": str(data_dir), "key": meta.get("key"),
                                 "spm_sha256": meta.get("spm", {}).get("sha256")}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    commit = git_commit()

    model = raw_model
    if t.get("compile"):
        model = torch.compile(model)
    if dist.distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    autocast_dtype = _autocast_dtype(t.get("precision", "auto"), device)
    peak = peak_flops(device, t.get("peak_flops"))
    schedule_choice = _hydra_choice(cfg, "schedule")
    logger = MetricsLogger(run_dir, enabled=main, wandb_cfg=OmegaConf.to_container(cfg.logger, resolve=True),
                           run_name=f"{cfg.name}-{schedule_choice}", config=resolved,
                           total_updates=int(t.max_update), start_update=num_updates)
    if main:
        logger.message(f"{run_dir}: {'resuming from ' + resumed_path if resumed_path else 'new run'} at update "
                       f"{num_updates}; {raw_model.num_parameters():,} parameters; device {device}"
                       f"{f' x{dist.world_size}' if dist.distributed else ''}; data {data_dir}")

    def summary(status: str, valid: dict | None = None, **extra) -> dict[str, Any]:
        s = {
            "status": status, "diverged_at": None, "updates": num_updates,
            "wall_time_s": round(counters["wall_time_s"], 3),
            "tokens_per_s": counters["train_tokens"] / counters["train_time_s"] if counters["train_time_s"] else None,
            "valid_loss": valid["loss"] if valid else (prev or {}).get("valid_loss"),
            "valid_nll": valid["nll"] if valid else (prev or {}).get("valid_nll"),
            "valid_ppl": valid["ppl"] if valid else (prev or {}).get("valid_ppl"),
            "num_parameters": raw_model.num_parameters(),
            "optimizer_state_bytes": optimizer_state_bytes(optimizer),
            "optimizer_state_breakdown": optimizer_state_breakdown(optimizer),
            "peak_memory_bytes": peak_memory_bytes(device),
            "name": cfg.name, "schedule": schedule_choice, "scale": _hydra_choice(cfg, "scale") or cfg.get("scale_name"),
        }
        s.update(extra)
        if main:
            atomic_write_json(run_dir / SUMMARY, s)
        return s

    def checkpoint(periodic: bool = False, best: bool = False) -> None:
        # every rank's RNG state (dropout streams differ per rank), gathered to rank 0
        rngs = D.gather_object(rng_state())
        if not main:
            return
        save_checkpoint({
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(), "rng": rngs if dist.distributed else rngs[0], "update": num_updates,
            "epoch": int(sampler.state_dict()["epoch"]), "config": resolved, "model_args": model_args,
            "data_dir": str(data_dir), "git_commit": commit, "best_valid_loss": best_valid,
            "counters": dict(counters), "world_size": dist.world_size,
        }, run_dir, periodic=periodic, best=best, keep_last=int(t.keep_last))

    def run_validation() -> dict:
        nonlocal best_valid
        v = validate(raw_model, valid_set, valid_sampler, device=device, autocast_dtype=autocast_dtype,
                     label_smoothing=float(t.label_smoothing), tok=tok)
        improved = v["loss"] < best_valid
        best_valid = min(best_valid, v["loss"])
        logger.log({"split": "valid", "update": num_updates, "epoch": epoch, **v, "best_loss": best_valid})
        return {**v, "improved": improved}

    summary("running")
    stop = _StopFlag()
    batches = _epoch_batches(sampler, train_set, tok.pad_id, tok.bos_id, tok.eos_id)
    update_freq, max_update = int(t.update_freq), int(t.max_update)
    max_epoch = int(t.max_epoch) if t.get("max_epoch") else None
    last_valid, epoch, saved_at = None, int(sampler.state_dict()["epoch"]), num_updates if resumed_path else -1
    win = {"loss": torch.zeros((), device=device), "nll": torch.zeros((), device=device),
           "gnorm": torch.zeros((), device=device), "tokens": 0, "updates": 0, "time": 0.0, "flops": 0.0}
    t_wall = time.perf_counter()
    try:
        while num_updates < max_update and not stop.set:
            t0 = time.perf_counter()
            micro, flops = [], 0.0
            for _ in range(update_freq):
                epoch, b = next(batches)
                # model FLOPs of the padded shapes (what the hardware computes), for MFU
                flops += raw_model.training_flops(tuple(b["src_tokens"].shape), tuple(b["target"].shape))
                micro.append(to_device(b, device))
            if max_epoch is not None and epoch > max_epoch:  # the sampler counts epochs from 1
                break
            res = train_step(model, optimizer, micro, label_smoothing=float(t.label_smoothing), pad_id=tok.pad_id,
                             clip_norm=float(t.clip_norm or 0.0), autocast_dtype=autocast_dtype,
                             world_size=dist.world_size, scheduler=scheduler)
            dt = time.perf_counter() - t0
            counters["train_time_s"] += dt
            counters["train_tokens"] += res.ntokens
            if not res.finite:
                counters["nonfinite_total"] += 1
                counters["nonfinite_consecutive"] += 1
                logger.message(f"update {num_updates + 1}: non-finite loss or gradient, step skipped "
                               f"({counters['nonfinite_consecutive']} in a row, {counters['nonfinite_total']} in all)")
                if counters["nonfinite_consecutive"] >= int(t.max_consecutive_nonfinite):
                    raise Diverged(num_updates + 1)
                continue
            counters["nonfinite_consecutive"] = 0
            num_updates += 1
            logger.advance()
            win["loss"] += res.loss_sum / max(res.ntokens, 1)
            win["nll"] += res.nll_sum / max(res.ntokens, 1)
            win["gnorm"] += res.gnorm
            win["tokens"] += res.ntokens
            win["updates"] += 1
            win["time"] += dt
            win["flops"] += flops

            if num_updates % int(t.log_interval) == 0 or num_updates == max_update:
                _log_train(logger, optimizer, scheduler, win, num_updates, epoch, counters, device, peak, main)
            do_val = num_updates % int(t.val_interval) == 0 or num_updates == max_update
            do_save = num_updates % int(t.save_interval) == 0
            improved = False
            if do_val:
                last_valid = run_validation()
                improved = last_valid["improved"]
            if int(t.get("bleu_interval") or 0) > 0 and num_updates % int(t.bleu_interval) == 0 and main:
                b = evaluate_bleu(raw_model, tok, data_dir, ["valid"], cfg.eval, None, device,
                                  max_sentences=cfg.eval.get("max_sentences"))
                logger.log({"split": "valid", "update": num_updates, "bleu": b["valid"]["bleu"],
                            "bleu_sentences": b["valid"]["sentences"]})
            if dist.distributed:  # a signal may reach the ranks at different updates: stop together
                flag = torch.tensor([float(stop.set)], device=device)
                stop.set = bool(D.all_reduce_sum(flag).item())
            if do_val or do_save or num_updates == max_update or stop.set:
                counters["wall_time_s"] += time.perf_counter() - t_wall
                t_wall = time.perf_counter()
                checkpoint(periodic=do_save, best=improved)
                saved_at = num_updates
    except Diverged as e:
        counters["wall_time_s"] += time.perf_counter() - t_wall
        msg = (f"{run_dir}: stopped at update {e.args[0]} after {t.max_consecutive_nonfinite} consecutive "
               f"non-finite losses/gradients: the run diverged (summary.json status=diverged)")
        logger.log({"split": "train", "update": num_updates, "event": "diverged", "diverged_at": e.args[0],
                    "nonfinite": counters["nonfinite_total"]})
        logger.message(msg)
        logger.close()
        stop.restore()
        s = summary("diverged", last_valid, diverged_at=e.args[0], nonfinite_total=counters["nonfinite_total"])
        D.cleanup()
        return s
    except BaseException:  # a crash or Ctrl-C: close the log files (wandb, progress bar) and re-raise
        logger.close()
        raise
    finally:
        stop.restore()

    counters["wall_time_s"] += time.perf_counter() - t_wall
    if stop.set and num_updates < max_update:
        logger.message(f"{run_dir}: interrupted at update {num_updates}; checkpoint_last.pt saved, rerun to resume")
        logger.close()
        s = summary("running", last_valid)
        D.cleanup()
        return s
    if last_valid is None or saved_at != num_updates:  # resumed at the end, or stopped by max_epoch
        last_valid = run_validation()
        checkpoint(best=last_valid["improved"])
    extra = {"nonfinite_total": counters["nonfinite_total"]}
    if main and t.get("bleu_at_end", True):
        bleu = evaluate_bleu(raw_model, tok, data_dir, list(cfg.eval.splits), cfg.eval, run_dir, device,
                             max_sentences=None, extra={"checkpoint": "checkpoint_last.pt", "update": num_updates})
        extra["bleu"] = {k: v.get("bleu") for k, v in bleu.items()}
        logger.log({"split": "test", "update": num_updates, **{f"bleu_{k}": v for k, v in extra["bleu"].items()}})
    logger.close()
    s = summary("completed", last_valid, **extra)
    D.cleanup()
    return s


def _log_train(logger, optimizer, scheduler, win, num_updates, epoch, counters, device, peak, main):
    """One record per log_interval; the only place device scalars are read back (one sync)."""
    n = max(win["updates"], 1)
    stats = {}
    if hasattr(optimizer, "stats"):
        st = optimizer.stats()
        keys = list(st)
        vals = torch.stack([st[k].float().to(device) for k in keys]).tolist() if keys else []
        stats = {f"optim_{k}": v for k, v in zip(keys, vals)}
    loss, nll, gnorm = (torch.stack((win["loss"], win["nll"], win["gnorm"])) / n).tolist()
    tps = win["tokens"] / win["time"] if win["time"] else None
    rec = {
        "split": "train", "update": num_updates, "epoch": epoch, "loss": loss, "nll": nll,
        "ppl": math.exp(min(nll, 100.0)), "lr": scheduler.get_last_lr()[0], "gnorm": gnorm,
        "tokens_per_s": tps, "mfu": (win["flops"] / win["time"] / peak) if (peak and win["time"]) else None,  # this rank's
        "nonfinite": counters["nonfinite_total"], "peak_memory_bytes": peak_memory_bytes(device),
        **stats,
    }
    if main:
        rec["optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
        rec["optimizer_state_breakdown"] = optimizer_state_breakdown(optimizer)
    logger.log(rec)
    win["loss"].zero_()
    win["nll"].zero_()
    win["gnorm"].zero_()
    win.update(tokens=0, updates=0, time=0.0, flops=0.0)
