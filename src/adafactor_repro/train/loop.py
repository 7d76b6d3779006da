"""train(cfg): the training loop (docs/architecture.md, "train"; docs/training.md for the behaviour).

Laid out as torchtitan's trainer: `Trainer(cfg)` is the setup (data, model, optimizer, resume), its
`train_step` is one optimizer update, `maybe_validate` and `maybe_checkpoint` run on their intervals, and
`train()` closes everything in one `finally` - log files, signal handlers and the process group - however
the run ends (completed, diverged, interrupted, or a crash).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import ConfigError, EvalConfig, LoggerConfig, TrainerConfig, check_experiment, typed
from ..data import (
    TokenBatchSampler,
    TranslationDataset,
    check_artifact,
    collate,
    load_meta,
    load_tokenizer,
    prepare,
    unigram_nll,
    update_budget,
)
from ..data.loader import EpochBatches
from ..files import SUMMARY, DirLock, atomic_write_json, atomic_write_text, read_summary, sweep_stale_temps
from ..machine import cpu_name, git_commit
from ..model import Transformer, TransformerConfig
from ..optim import optimizer_state_breakdown, optimizer_state_bytes
from . import distributed as D
from . import fsdp as F
from . import step as S
from .checkpoint import find_resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from .evaluation import evaluate_bleu
from .metrics import MetricsLogger, summary_line
from .perf import peak_flops, peak_memory_bytes
from .preflight import validate_config
from .resume import RESUME_MAY_CHANGE, config_changes, resolved_config
from .signals import StopFlag


class Diverged(RuntimeError):
    """(update, reason): non-finite updates in a row, or a loss past the explosion threshold."""


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


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


@torch.no_grad()
def validate(model, dataset, sampler, *, device, autocast_dtype, label_smoothing, tok) -> dict[str, float]:
    """Per-token smoothed loss and NLL (nats) over this split, summed over ranks; ppl = exp(nll)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for idx in sampler:
        b = S.to_device(collate([dataset[i] for i in idx], pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id),
                        device)
        loss, nll = S.forward_loss(model, b, label_smoothing=label_smoothing, pad_id=tok.pad_id,
                                   autocast_dtype=autocast_dtype)
        sums += torch.stack((loss.detach().double(), nll.double(),
                             torch.full((), float(b["ntokens"]), device=device, dtype=torch.float64)))
    D.all_reduce_sum(sums)
    model.train(was_training)
    loss, nll, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "nll": nll / n, "ppl": math.exp(min(nll / n, 100.0)), "ntokens": int(n)}


@dataclass
class TrainState:
    """What the loop itself carries from update to update (the rest lives in the model, optimizer,
    scheduler and sampler). `counters` go into every checkpoint, so a resumed run continues them."""

    num_updates: int = 0
    epoch: int = 1
    best_valid: float = math.inf
    last_valid: dict | None = None  # the latest validation, for summary.json
    saved_at: int = -1              # the update of the newest checkpoint_last.pt
    counters: dict[str, float] = field(default_factory=lambda: {
        "nonfinite_total": 0, "nonfinite_consecutive": 0, "train_tokens": 0, "train_time_s": 0.0,
        "wall_time_s": 0.0})


class _Window:
    """Sums over the updates since the last train record; device tensors, read back once per record."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.nll = torch.zeros((), device=device)
        self.gnorm = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.nll.zero_()
        self.gnorm.zero_()
        self.tokens, self.updates, self.time, self.flops = 0, 0, 0.0, 0.0


class Trainer:
    """The setup of one run and the steps of its loop; `train(cfg)` drives it."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.lock: DirLock | None = None
        check_experiment(_hydra_choice(cfg, "experiments"))
        self.t = t = typed(cfg.trainer, TrainerConfig, "trainer")
        self.eval_cfg = typed(cfg.eval, EvalConfig, "eval")
        self.logger_cfg = typed(cfg.logger, LoggerConfig, "logger")
        validate_config(cfg, {"experiments": _hydra_choice(cfg, "experiments")})  # before the lock's mkdir
        self.logger: MetricsLogger | None = None
        self.stop: StopFlag | None = None
        self.dist = D.init_distributed(t.device, t.dist_timeout_min)
        self.device, self.main = self.dist.device, self.dist.is_main
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.run_dir = Path(cfg.run_dir)
        # One process per run directory, for the whole run: two would mix their files. Rank 0 holds it.
        error = None
        if self.main:
            try:
                self.lock = DirLock(self.run_dir).acquire()
            except Exception as e:
                error = e
        error = D.broadcast_object(error)
        if error is not None:
            raise error
        self.prev = read_summary(self.run_dir)
        self.state = TrainState()

    def finished_before(self) -> bool:
        """The run directory holds a diverged run, or one completed at >= trainer.max_update."""
        prev = self.prev
        return bool(prev) and (prev.get("status") == "diverged" or (
            prev.get("status") == "completed" and int(prev.get("updates", 0)) >= self.t.max_update))

    def setup(self) -> None:
        cfg, t, dist, device, main = self.cfg, self.t, self.dist, self.device, self.main
        if main:  # temporary files of a writer killed mid-write (we hold the lock: none is live)
            for p in sweep_stale_temps(self.run_dir):
                print(f"{self.run_dir}: removed {p.name}, left by an interrupted write", flush=True)
        # -------------------------------------------------------------- data
        # Every rank calls prepare(): the first to take its file lock builds, the others wait on the lock
        # (not in a collective, which would time out while WMT14 builds) and then reuse the build.
        self.data_dir = data_dir = Path(prepare(cfg.data)).resolve()  # absolute: evaluate.py may run elsewhere
        self.tok = tok = load_tokenizer(data_dir)
        spm_sha = check_artifact(data_dir, tok)  # before update 1: the tokenizer, its vocabulary and the ids agree
        self.train_set = TranslationDataset(data_dir, "train")
        self.valid_set = TranslationDataset(data_dir, "valid")
        # the context-free baseline of the validation NLL, for the results' loss verdict (summary.json)
        self.valid_unigram_nll = unigram_nll(self.train_set, self.valid_set, tok.vocab_size, tok.eos_id)
        self.max_tokens, self.update_freq = self._batch_plan()
        self.sampler = TokenBatchSampler(self.train_set.src_lengths, self.train_set.tgt_lengths, self.max_tokens,
                                         seed=t.seed, shuffle=True, num_replicas=dist.world_size, rank=dist.rank,
                                         budget=t.batch_budget)
        self.valid_sampler = TokenBatchSampler(self.valid_set.src_lengths, self.valid_set.tgt_lengths,
                                               t.max_tokens, seed=t.seed, shuffle=False,
                                               num_replicas=dist.world_size, rank=dist.rank)

        # -------------------------------------------------------------- model, optimizer, schedule
        torch.manual_seed(t.seed)
        self.model_args = dict(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=tok.vocab_size,
                               pad_id=tok.pad_id)
        self.raw_model = Transformer(TransformerConfig(**self.model_args)).to(device)
        # FSDP2 shards the parameters in place, so before the optimizer sees them (then DTensors)
        self.fsdp = t.parallel == "fsdp" and dist.distributed
        if self.fsdp:
            F.shard(self.raw_model, device)
        self._eval_copy: tuple[int, torch.nn.Module] | None = None
        self.optimizer = instantiate(cfg.optim)(self.raw_model.parameters())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, instantiate(cfg.schedule))
        # dropout streams differ per rank; reseeding on rank 0 too keeps 1-process runs = rank 0 of N
        torch.manual_seed(t.seed + dist.rank)

        self.resolved = resolved_config(cfg)
        # Which built data this run saw, by content: the artifact's cache key (a hash of the options and the
        # input files' sha256) and the sha256 of the tokenizer file loaded (equal to meta.json's: checked above).
        meta = load_meta(data_dir)
        self.resolved["data_artifact"] = {"dir": str(data_dir), "key": meta.get("key"), "spm_sha256": spm_sha}

        # -------------------------------------------------------------- resume
        resumed = find_resume_checkpoint(self.run_dir) if main else None
        self.resumed_path = D.broadcast_object(str(resumed[1]) if resumed else None)
        if self.resumed_path and not main:
            resumed = find_resume_checkpoint(self.run_dir)  # every rank reads the file rank 0 found usable
        if resumed:
            self._load(*resumed)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.resolved)))
        self.commit = git_commit()

        model = self.raw_model
        if dist.distributed and not self.fsdp:
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if t.compile:  # after DDP: its graph breaks at the gradient buckets, so all-reduce overlaps backward
            model = torch.compile(model)
        model.train()
        self.model = model
        # Figure 1 of the paper: RMS(U) of chosen weight matrices, logged with the other optimizer statistics.
        named = dict(self.raw_model.named_parameters())
        unknown = [n for n in self.logger_cfg.track_rms_u if n not in named]
        if unknown:
            raise ConfigError(f"logger.track_rms_u: no parameter named {unknown}; the model's are e.g. "
                              f"{list(named)[:4]}")
        self.tracked = {n: named[n] for n in self.logger_cfg.track_rms_u}
        self.autocast_dtype = _autocast_dtype(t.precision, device)
        self.peak = peak_flops(device, t.peak_flops)
        self.schedule_choice = _hydra_choice(cfg, "schedule")
        self.logger = MetricsLogger(self.run_dir, enabled=main, wandb_cfg=asdict(self.logger_cfg),
                                    run_name=f"{cfg.name}-{self.schedule_choice}", config=self.resolved,
                                    total_updates=t.max_update, start_update=self.state.num_updates)
        if main:
            self.logger.message(
                f"{self.run_dir}: {'resuming from ' + self.resumed_path if self.resumed_path else 'new run'} at update "
                f"{self.state.num_updates}; {self.raw_model.num_parameters():,} parameters; device {device}"
                f"{f' x{dist.world_size}' if dist.distributed else ''}; batches of {self.max_tokens} "
                f"{t.batch_budget} tokens x update_freq {self.update_freq}"
                f"{f' x {dist.world_size} ranks' if dist.distributed else ''} per update; data {data_dir}")
        self.state.epoch = int(self.sampler.state_dict()["epoch"])
        self.state.saved_at = self.state.num_updates if self.resumed_path else -1
        self.batches = EpochBatches(self.train_set, self.sampler, pad_id=tok.pad_id, bos_id=tok.bos_id,
                                    eos_id=tok.eos_id, num_workers=t.num_workers,
                                    pin_memory=device.type == "cuda")
        self.window = _Window(device)
        self.write_summary("running")
        self.stop = StopFlag(self.logger.message if main else (lambda text: None), solo=not dist.distributed)

    def _batch_plan(self) -> tuple[int, int]:
        """(this rank's batch budget, update_freq). With trainer.tokens_per_update the global batch is the
        invariant: the world size divides it (data.batching.update_budget), refusing where it cannot."""
        t, world = self.t, self.dist.world_size
        if not t.tokens_per_update:
            return t.max_tokens, t.update_freq
        if t.update_freq != 1:
            raise ConfigError(f"trainer.tokens_per_update={t.tokens_per_update} and trainer.update_freq="
                              f"{t.update_freq} both set the batch: keep tokens_per_update (the loop derives "
                              "update_freq from the world size) and drop update_freq")
        try:
            return update_budget(t.tokens_per_update, t.max_tokens, world)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _load(self, ckpt: dict, path: Path) -> None:
        changed = config_changes(ckpt.get("config") or {}, self.resolved, int(ckpt.get("world_size", 1)),
                                 self.dist.world_size)
        if changed:
            raise ConfigError(
                f"{self.run_dir} holds a run with other settings, resuming it would mix two configurations: "
                f"{'; '.join(changed)}. Rerun with the stored values ({path.name}'s config, also in "
                f"config.yaml) or give the new run another run_dir. A resume may change only: "
                f"{', '.join(RESUME_MAY_CHANGE)}")
        if self.fsdp:
            F.load_full_state(self.raw_model, self.optimizer, ckpt["model"], ckpt["optimizer"])
        else:
            self.raw_model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(F.optim_state_keyed(self.raw_model, ckpt["optimizer"], by_name=False))
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # with a global batch, another world size splits it into other per-rank budgets (same batch size)
        self.sampler.load_state_dict(ckpt["sampler"], rebatch=bool(self.t.tokens_per_update))
        rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if len(rngs) != self.dist.world_size and self.main:
            print(f"{path} was written by {len(rngs)} process(es), this run has {self.dist.world_size}: "
                  "RNG streams restart from rank 0's, so the resumed run is not bit-identical", flush=True)
        set_rng_state(rngs[self.dist.rank % len(rngs)])
        st = self.state
        st.num_updates = int(ckpt["update"])
        st.best_valid = float(ckpt.get("best_valid_loss", math.inf))
        st.counters.update({k: ckpt["counters"][k] for k in st.counters if k in ckpt.get("counters", {})})

    # ------------------------------------------------------------------ the loop's steps
    def train_step(self) -> bool:
        """One optimizer update over trainer.update_freq batches. False when there is nothing left to do
        (max_epoch reached); raises Diverged after max_consecutive_nonfinite skipped updates in a row."""
        t, st, c = self.t, self.state, self.state.counters
        t0 = time.perf_counter()
        micro, flops = [], 0.0
        for _ in range(self.update_freq):
            st.epoch, b = next(self.batches)
            # model FLOPs of the padded shapes (what the hardware computes), for MFU
            flops += self.raw_model.training_flops(tuple(b["src_tokens"].shape), tuple(b["target"].shape))
            micro.append(S.to_device(b, self.device))
        if t.max_epoch and st.epoch > t.max_epoch:  # the sampler counts epochs from 1
            return False
        res = S.train_step(self.model, self.optimizer, micro, label_smoothing=t.label_smoothing,
                           pad_id=self.tok.pad_id, clip_norm=t.clip_norm,
                           autocast_dtype=self.autocast_dtype, world_size=self.dist.world_size,
                           scheduler=self.scheduler, stop=self.stop.requested)
        if self.dist.distributed:  # a signal on any rank stops every rank after this update
            self.stop.set = res.stop
        dt = time.perf_counter() - t0
        c["train_time_s"] += dt
        c["train_tokens"] += res.ntokens
        if not res.finite:
            c["nonfinite_total"] += 1
            c["nonfinite_consecutive"] += 1
            self.logger.message(f"update {st.num_updates + 1}: non-finite loss or gradient, step skipped "
                                f"({c['nonfinite_consecutive']} in a row, {c['nonfinite_total']} in all)")
            if c["nonfinite_consecutive"] >= t.max_consecutive_nonfinite:
                raise Diverged(st.num_updates + 1, f"{t.max_consecutive_nonfinite} consecutive non-finite "
                               "losses/gradients")
            return True
        c["nonfinite_consecutive"] = 0
        st.num_updates += 1
        self.logger.advance()
        w = self.window
        w.loss += res.loss_sum / max(res.ntokens, 1)
        w.nll += res.nll_sum / max(res.ntokens, 1)
        w.gnorm += res.gnorm
        w.tokens += res.ntokens
        w.updates += 1
        w.time += dt
        w.flops += flops
        if st.num_updates % t.log_interval == 0 or st.num_updates == t.max_update:
            rec = _log_train(self.logger, self.optimizer, self.scheduler, w, st.num_updates, st.epoch, c,
                             self.device, self.peak, self.main, self.tracked)
            self._check_explosion(rec["loss"], "training")
        return True

    def _check_explosion(self, loss: float, what: str) -> None:
        """A loss above diverge_loss_factor x ln(V) - that many times the loss of a uniform guess over the
        vocabulary - is a run that has blown up while staying finite (docs/training.md)."""
        limit = self.t.diverge_loss_factor * math.log(self.tok.vocab_size)
        if self.t.diverge_loss_factor > 0 and loss > limit:
            raise Diverged(self.state.num_updates, f"{what} loss {loss:.4g} above {self.t.diverge_loss_factor:g} x "
                           f"ln(vocabulary {self.tok.vocab_size}) = {limit:.4g} (trainer.diverge_loss_factor)")

    def eval_model(self) -> torch.nn.Module:
        """The model to evaluate: itself, or under FSDP an unsharded copy of it as of this update (FSDP's
        forward is a collective; ranks validate and decode different numbers of batches and steps)."""
        if not self.fsdp:
            return self.raw_model
        if self._eval_copy is None or self._eval_copy[0] != self.state.num_updates:
            full = F.full_model_state(self.raw_model)
            if self._eval_copy is None:
                with torch.random.fork_rng(devices=[]):  # its initialisation must not move the training RNG
                    copy = Transformer(TransformerConfig(**self.model_args))
            else:
                copy = self._eval_copy[1]
            copy.load_state_dict(full)
            self._eval_copy = (self.state.num_updates, copy.to(self.device))
        return self._eval_copy[1]

    def validate(self) -> dict:
        """Validation loss now; updates the best loss; logged."""
        st = self.state
        v = validate(self.eval_model(), self.valid_set, self.valid_sampler, device=self.device,
                     autocast_dtype=self.autocast_dtype, label_smoothing=self.t.label_smoothing, tok=self.tok)
        self._check_explosion(v["loss"], "validation")
        improved = v["loss"] < st.best_valid
        st.best_valid = min(st.best_valid, v["loss"])
        self.logger.log({"split": "valid", "update": st.num_updates, "epoch": st.epoch, **v,
                         "best_loss": st.best_valid})
        st.last_valid = {**v, "improved": improved}
        return st.last_valid

    def maybe_validate(self) -> bool:
        """Validation loss every trainer.val_interval updates and at the last one; periodic BLEU (on a prefix)
        every trainer.bleu_interval. True when this update's validation loss is the best so far."""
        t, n = self.t, self.state.num_updates
        improved = False
        if n % t.val_interval == 0 or n == t.max_update:
            improved = self.validate()["improved"]
        if t.bleu_interval > 0 and n % t.bleu_interval == 0:
            # every rank decodes its shard (no rank idles in a collective while rank 0 decodes); rank 0 scores
            b = evaluate_bleu(self.eval_model(), self.tok, self.data_dir, ["valid"], self.eval_cfg, None,
                              max_sentences=self.eval_cfg.max_sentences, sharded=True)
            if self.main:
                self.logger.log({"split": "valid", "update": n, "bleu": b["valid"]["bleu"],
                                 "bleu_sentences": b["valid"]["sentences"]})
        return improved

    def maybe_checkpoint(self, improved: bool) -> None:
        """checkpoint_last.pt after each validation, periodic save, the last update and a stop signal."""
        t, n = self.t, self.state.num_updates
        validated = n % t.val_interval == 0 or n == t.max_update
        periodic = n % t.save_interval == 0
        if validated or periodic or n == t.max_update or self.stop.set:
            self.tick_wall_time()
            self.checkpoint(periodic=periodic, best=improved)

    def checkpoint(self, periodic: bool = False, best: bool = False) -> None:
        st = self.state
        # every rank's RNG state (dropout streams differ per rank), gathered to rank 0
        rngs = D.gather_object(rng_state())
        st.saved_at = st.num_updates
        # FSDP: gathered to full state dicts on rank 0 (a collective), keys as the DDP path's (train/fsdp.py)
        model_sd, optim_sd = F.full_state(self.raw_model, self.optimizer) if self.fsdp else (None, None)
        if not self.main:
            return
        save_checkpoint({
            "model": model_sd if self.fsdp else self.raw_model.state_dict(),
            "optimizer": optim_sd if self.fsdp else self.optimizer.state_dict(), "parallel": self.t.parallel,
            # the batches the loop consumed, not the DataLoader workers' read-ahead
            "scheduler": self.scheduler.state_dict(), "sampler": self.batches.state_dict(),
            "rng": rngs if self.dist.distributed else rngs[0], "update": st.num_updates,
            "epoch": int(self.batches.state_dict()["epoch"]), "config": self.resolved, "model_args": self.model_args,
            "data_dir": str(self.data_dir), "git_commit": self.commit, "best_valid_loss": st.best_valid,
            "counters": dict(st.counters), "world_size": self.dist.world_size,
        }, self.run_dir, periodic=periodic, best=best, keep_last=self.t.keep_last)

    def tick_wall_time(self) -> None:
        now = time.perf_counter()
        self.state.counters["wall_time_s"] += now - self._t_wall
        self._t_wall = now

    def write_summary(self, status: str, **extra) -> dict[str, Any]:
        st, prev = self.state, self.prev or {}
        valid = st.last_valid
        c = st.counters
        s = {
            "status": status, "diverged_at": None, "updates": st.num_updates,
            "wall_time_s": round(c["wall_time_s"], 3),
            "tokens_per_s": c["train_tokens"] / c["train_time_s"] if c["train_time_s"] else None,
            "valid_loss": valid["loss"] if valid else prev.get("valid_loss"),
            "valid_nll": valid["nll"] if valid else prev.get("valid_nll"),
            "valid_ppl": valid["ppl"] if valid else prev.get("valid_ppl"),
            "valid_unigram_nll": getattr(self, "valid_unigram_nll", None),
            "num_parameters": self.raw_model.num_parameters(),
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "optimizer_state_breakdown": optimizer_state_breakdown(self.optimizer),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "name": self.cfg.name, "schedule": self.schedule_choice,
            "scale": _hydra_choice(self.cfg, "scale") or self.cfg.get("scale_name"),
            # float sums differ in their last bits between vector units: `make verify` is bit for bit only on
            # the CPU (or GPU) and torch build that trained the run, so the run says which they were
            "cpu": cpu_name(), "torch": torch.__version__, "git_commit": getattr(self, "commit", None),
            "cuda_device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }
        s.update(extra)
        if self.main:
            atomic_write_json(self.run_dir / SUMMARY, s)
        return s

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        """Updates until trainer.max_update (or max_epoch, a stop signal, divergence); returns the summary."""
        st, max_update = self.state, self.t.max_update
        self._t_wall = time.perf_counter()
        try:
            while st.num_updates < max_update and not self.stop.set:
                n = st.num_updates
                if not self.train_step():
                    break
                if st.num_updates == n:  # a skipped (non-finite) update
                    continue
                self.maybe_checkpoint(self.maybe_validate())
        except Diverged as e:
            return self._diverged(*e.args)
        self.tick_wall_time()
        if self.stop.set and st.num_updates < max_update:
            if st.saved_at != st.num_updates:  # stopped during skipped updates: the last finite state
                self.checkpoint()
            self.logger.message(f"{self.run_dir}: interrupted at update {st.num_updates}; checkpoint_last.pt saved at "
                                f"update {st.saved_at}, rerun the same command to resume")
            return self.write_summary("running")
        return self._finish()

    def _diverged(self, at: int, reason: str) -> dict[str, Any]:
        st = self.state
        self.tick_wall_time()
        self.logger.log({"split": "train", "update": st.num_updates, "event": "diverged", "diverged_at": at,
                         "reason": reason, "nonfinite": st.counters["nonfinite_total"]})
        self.logger.message(f"{self.run_dir}: stopped at update {at}: {reason}; the run diverged "
                            "(summary.json status=diverged)")
        return self.write_summary("diverged", diverged_at=at, diverged_reason=reason,
                                  nonfinite_total=st.counters["nonfinite_total"])

    def _finish(self) -> dict[str, Any]:
        """Final validation and checkpoint (if the last update had none), BLEU of the eval splits, summary."""
        st = self.state
        if st.last_valid is None or st.saved_at != st.num_updates:  # resumed at the end, or stopped by max_epoch
            self.validate()
            self.checkpoint(best=st.last_valid["improved"])
        extra = {"nonfinite_total": st.counters["nonfinite_total"]}
        eval_model = self.eval_model()  # a collective under FSDP: every rank, before rank 0 alone decodes
        if self.main and self.t.bleu_at_end:
            bleu = evaluate_bleu(eval_model, self.tok, self.data_dir, self.eval_cfg.splits, self.eval_cfg,
                                 self.run_dir, max_sentences=None,
                                 extra={"checkpoint": "checkpoint_last.pt", "update": st.num_updates},
                                 say=self.logger.message)
            extra["bleu"] = {k: v.get("bleu") for k, v in bleu.items()}
            self.logger.log({"split": "test", "update": st.num_updates,
                             **{f"bleu_{k}": v for k, v in extra["bleu"].items()}})
        return self.write_summary("completed", **extra)

    def fail(self, error: BaseException) -> None:
        """Record in summary.json that an error stopped the run, and at which update (the traceback goes to the
        console). Without this the summary kept saying `running` at the update of its last write."""
        if hasattr(self, "_t_wall"):
            self.tick_wall_time()
        self.write_summary("failed", failed_at=self.state.num_updates,
                           error=f"{type(error).__name__}: {' '.join(str(error).split())}"[:500])

    def close(self) -> None:
        """Close the log files (wandb, progress bar), restore the signal handlers, free the run directory."""
        if self.stop is not None:
            self.stop.restore()
        if self.logger is not None:
            self.logger.close()
        if self.lock is not None:
            self.lock.release()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run configured by `cfg`; returns its summary (summary.json's content)."""
    trainer, ok = None, False
    try:
        trainer = Trainer(cfg)
        if trainer.finished_before():
            prev = trainer.prev
            if trainer.main:
                print(f"{trainer.run_dir}: already {prev['status']} at update {prev.get('updates')}; not retraining "
                      f"(delete the directory, or raise trainer.max_update to continue a completed run)", flush=True)
            ok = True
            return prev
        trainer.setup()
        summary = trainer.fit()
        if trainer.main:  # one line however the run ended: status, updates, wall time, optimizer state, BLEU
            trainer.logger.message(summary_line(summary, trainer.run_dir))
        ok = True
        return summary
    except Exception as e:
        # Once setup has written the run's first summary (the logger exists from then on), an error leaves a
        # summary that says so; before that, nothing of this run is on disk to describe.
        if trainer is not None and trainer.main and trainer.logger is not None:
            with contextlib.suppress(Exception):  # the original error is the one to report
                trainer.fail(e)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        D.cleanup(ok)  # the process group goes with the run, a crash included


def _log_train(logger, optimizer, scheduler, win, num_updates, epoch, counters, device, peak, main, tracked=None):
    """One record per log_interval; the only place device scalars are read back: one host sync for the
    window's sums and the optimizer's statistics together."""
    n = max(win.updates, 1)
    st = optimizer.stats() if hasattr(optimizer, "stats") else {}
    if st:
        for name, p in (tracked or {}).items():
            v = optimizer.rms_u(p) if hasattr(optimizer, "rms_u") else None
            if v is not None:
                st[f"rms_u/{name}"] = v
    keys = list(st)
    vals = torch.cat([torch.stack((win.loss, win.nll, win.gnorm)) / n,
                      *[st[k].float().to(device).reshape(1) for k in keys]]).tolist()
    (loss, nll, gnorm), stats = vals[:3], {f"optim_{k}": v for k, v in zip(keys, vals[3:])}
    tps = win.tokens / win.time if win.time else None
    rec = {
        "split": "train", "update": num_updates, "epoch": epoch, "loss": loss, "nll": nll,
        "ppl": math.exp(min(nll, 100.0)), "lr": scheduler.get_last_lr()[0], "gnorm": gnorm,
        "tokens_per_update": win.tokens / n,  # target tokens, all ranks
        "tokens_per_s": tps, "mfu": (win.flops / win.time / peak) if (peak and win.time) else None,  # this rank's
        "nonfinite": counters["nonfinite_total"], "peak_memory_bytes": peak_memory_bytes(device),
        **stats,
    }
    if main:
        rec["optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
        rec["optimizer_state_breakdown"] = optimizer_state_breakdown(optimizer)
    logger.log(rec)
    win.reset()
    return rec
