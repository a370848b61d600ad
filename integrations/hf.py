"""Hugging Face ``Trainer`` and TRL ``SFTTrainer`` on packwise batches, exact by default.

``PackwiseTrainer(model, args, train_dataset=ds, sampler=PackedBatchSampler(lengths, 4096))`` is all
a user writes.  The mixin owns what a hand-written ``get_train_dataloader`` usually gets wrong:

* the train ``DataLoader`` holds the packwise sampler as is, with this rank's ``num_replicas`` /
  ``rank`` taken from the Trainer's accelerator; it is never passed through ``accelerator.prepare``
  (so accelerate cannot shard the already-sharded batches again; the Trainer moves every batch
  to the device in ``_prepare_inputs``);
* ``sampler.set_epoch(epoch)`` before every epoch, and the epoch's own length (pruned epochs are
  shorter) for gradient-accumulation boundaries;
* the loss: per-token cross-entropy summed over this rank's batch and divided by the supervised
  tokens of the whole optimizer step (all accumulation micro-batches, all ranks: the Trainer's
  ``num_items_in_batch``), times the world size that DDP's gradient mean divides out again;
* selection policies (InfoBatch, RS2, ``ScoreSelector`` behind a ``PruningSampler``): each kept
  example's loss is scaled by the policy weight (``1/(1-r)`` for InfoBatch) and its per-example
  loss is fed back with ``policy.update`` (gathered across ranks);
* checkpoints: every rank writes ``packwise_rank{r}.npz`` (JSON + arrays, never a pickle: the sampler's ``state_dict`` at the
  batches the Trainer consumed, the policy's ``state_dict``) into the checkpoint folder;
  ``trainer.train(resume_from_checkpoint=...)`` restores the policy and the epoch position and
  resumes mid-epoch with exactly the rest of the epoch.  Under the same world size the Trainer skips
  the consumed batches by replaying index lists of the (pure) epoch plan, never loading or
  collating their data; under another one (2 processes resumed in 1 or 3) the sampler deals the
  rest of the epoch afresh from its global cursor: every file holds the same global state, so a
  new rank without a file of its own reads rank 0's.

Batches keep ``labels``/``loss_weight``/``example_index``/``example_ids`` away from the model and
pass everything else (``position_ids``, ``cu_seq_lens_*``, ``seq_idx``, masks, ``use_cache=False``)
to ``model(**batch)``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError("packwise.integrations.hf needs transformers: pip install 'packwise[hf]'") from err

from ..packing import PackedCollator, example_losses, packed_loss, token_losses
from ..samplers import PruningSampler, load_state, save_state
from ..selection import AccumulationNoiseSource, DDPNoiseSource, GradientNoiseScale, LRScaler, SourceLossTracker

STATE_FILE = "packwise_rank{rank}.npz"
_OLD_STATE_FILE = "packwise_rank{rank}.pt"  # pickles written before 0.x: refused, never loaded
_NOT_FOR_MODEL = ("labels", "loss_weight", "example_index", "example_ids")


class IndexedExamples(Dataset):
    """``ds[i]`` (a dict) plus ``"index": i``: the batch then knows its dataset ids for the policy."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        ex = self.dataset[i]
        if not isinstance(ex, dict):
            raise ValueError(f"train_dataset[{i}] is a {type(ex).__name__}; each example must be a dict with 'input_ids'")
        return {**ex, "index": int(i)}


class IdsCollator:
    """A packwise collator that also returns ``example_ids`` (dataset ids, in the order collated)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        if examples and all("index" in ex for ex in examples):
            batch["example_ids"] = torch.tensor([int(ex["index"]) for ex in examples], dtype=torch.int64)
        return batch


def _set_replicas(sampler, num_replicas: int, rank: int) -> None:
    """Point ``sampler`` at this rank of the Trainer's world (its plan is re-dealt on next use)."""
    if (getattr(sampler, "num_replicas", num_replicas), getattr(sampler, "rank", rank)) == (num_replicas, rank):
        return
    if not hasattr(sampler, "num_replicas"):
        raise ValueError(
            f"the Trainer runs {num_replicas} processes but {type(sampler).__name__} has no num_replicas/rank; "
            f"pass a packwise sampler (PackedBatchSampler, BucketBatchSampler, PruningSampler)"
        )
    sampler.num_replicas, sampler.rank = int(num_replicas), int(rank)  # a planned sampler re-deals for the new world size


def _token_weights(policy, ids: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-token policy weight: the weight of the example each token belongs to (0 on padding)."""
    w = torch.as_tensor(policy.weights_for(ids.cpu().numpy()), dtype=torch.float32)
    example_index = batch["example_index"].cpu()
    seg_w = torch.zeros(example_index.shape[0], dtype=torch.float32)
    real = example_index >= 0
    seg_w[real] = w[example_index[real]]
    return seg_w[batch["seq_idx"].cpu().long()].to(batch["labels"].device)


def _check_layout(policy, collator, what: str = "a selection policy") -> None:
    if policy is not None and "seq_idx" not in getattr(collator, "layout", ()):
        raise ValueError(
            f"{what} needs per-example losses: give the collator a layout with 'seq_idx' "
            "(e.g. PackedCollator(layout=('flash', 'seq_idx')))"
        )


def _is_mixture(sampler) -> bool:
    """A ``MixtureSampler`` (or a look-alike): it maps batch indices to sources and updates per interval."""
    return callable(getattr(sampler, "sources_of", None)) and hasattr(sampler, "update_every")


def _mixture_tracker(sampler, collator):
    """The per-source loss tracker of a mixture sampler (feeds its policy, if any), else None."""
    if not _is_mixture(sampler):
        return None
    _check_layout(sampler, collator, "a MixtureSampler (per-source loss)")
    return SourceLossTracker(sampler.policy, sampler.num_sources, sampler.update_every, names=sampler.names)


class PackwiseTrainerMixin:
    """Mixin for ``transformers.Trainer`` subclasses; see the module docstring for what it does.

    Args (keyword-only, besides the Trainer's own):
        sampler: a packwise batch sampler (``PackedBatchSampler``, ``BucketBatchSampler``, ...) or a
            ``PruningSampler`` (batches of ``per_device_train_batch_size`` kept examples; with
            ``max_tokens=`` and ``lengths=``, packed batches of the kept examples), or a
            function ``dataset -> sampler`` called on the Trainer's prepared ``train_dataset`` (for
            TRL, which tokenizes text itself: ``lambda ds: PackedBatchSampler("input_ids", 4096, dataset=ds)``).
        collator: the packwise collator (default ``PackedCollator()``: padding-free, ``flash`` +
            ``seq_idx`` layout, ``use_cache=False``); also used for evaluation.
        policy: a selection policy to reweight and update (default: ``sampler.policy`` if any;
            a ``MixtureSampler``'s ``policy`` is its mixture policy, which the trainer feeds instead).

    With a ``MixtureSampler`` the trainer logs each source's training loss (``loss/<source>``, the
    token mean over the last update interval, all ranks), feeds the sampler's policy through a
    :class:`packwise.selection.SourceLossTracker` (one ``all_reduce`` per interval) and saves and
    restores the tracker with the checkpoint; the sampler's own state (cursors, weights, policy)
    resumes the epoch exactly, without replaying the consumed batches.
    """

    def __init__(self, *args, sampler, collator=None, policy=None, **kwargs):
        collator = PackedCollator() if collator is None else collator
        if policy is None and not _is_mixture(sampler):
            policy = getattr(sampler, "policy", None)
        _check_layout(policy, collator)
        if "data_collator" in kwargs:
            raise ValueError("pass the packwise collator as collator=..., not data_collator=...")
        self.packwise_sampler = sampler
        self.packwise_collator = IdsCollator(collator)
        self.packwise_policy = policy
        self.packwise_mixture = _mixture_tracker(sampler, collator)
        self._packwise_resumed_mixture = False  # the mixture sampler was positioned by its saved state
        self._packwise_consumed = 0  # micro-batches of the current epoch handed to training_step
        self._packwise_plain = torch.zeros(())  # unweighted loss summed since the last log
        self._packwise_plain_step = 0
        super().__init__(*args, data_collator=self.packwise_collator, **kwargs)
        if self.packwise_mixture is not None:  # NCCL reduces on the GPU, even for a rank with no loss yet
            self.packwise_mixture.device = self.args.device
        if callable(sampler) and not hasattr(sampler, "__iter__"):
            # a factory: built on the dataset the Trainer prepared (TRL tokenizes text in __init__)
            self.packwise_sampler = sampler(self.train_dataset)
            self.packwise_mixture = _mixture_tracker(self.packwise_sampler, collator)
            if self.packwise_mixture is not None:
                self.packwise_mixture.device = self.args.device
            if policy is None and self.packwise_mixture is None:
                self.packwise_policy = getattr(self.packwise_sampler, "policy", None)
                _check_layout(self.packwise_policy, collator)

    # --- data ------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        sampler = self.packwise_sampler
        _set_replicas(sampler, self.accelerator.num_processes, self.accelerator.process_index)
        workers = self.args.dataloader_num_workers
        common: dict[str, Any] = dict(
            collate_fn=self.packwise_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
        )
        if workers > 0 and self.args.dataloader_prefetch_factor is not None:
            common["prefetch_factor"] = self.args.dataloader_prefetch_factor
        dataset = IndexedExamples(self.train_dataset)
        if isinstance(sampler, PruningSampler):
            return DataLoader(
                dataset, sampler=sampler, batch_size=self._train_batch_size, drop_last=self.args.dataloader_drop_last, **common
            )
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def _run_epoch(self, **kwargs):
        # the Trainer sizes every epoch like the first; a pruned epoch is shorter, so its
        # accumulation boundaries and last step come from this epoch's own length
        epoch = kwargs["epoch"]
        self.packwise_sampler.set_epoch(epoch)
        for callback in self.callback_handler.callbacks:  # NoiseScaleCallback under DDP: the wrapped model
            if hasattr(callback, "bind_wrapped"):
                callback.bind_wrapped(kwargs["model"], self.args)
        steps = len(kwargs["train_dataloader"])
        kwargs["steps_in_epoch"] = steps
        kwargs["num_update_steps_per_epoch"] = max(math.ceil(steps / self.args.gradient_accumulation_steps), 1)
        resumed = kwargs.get("resume_from_checkpoint") is not None and epoch == kwargs.get("epochs_trained")
        self._packwise_consumed = int(kwargs.get("steps_trained_in_current_epoch", 0)) if resumed else 0
        return super()._run_epoch(**kwargs)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        # a mixture sampler resumed from its saved state yields exactly the rest of the epoch: no
        # replay (its plan depends on the policy's answers, which only the saved state holds)
        if self._packwise_resumed_mixture:
            return dataloader
        return super().get_resumed_dataloader(dataloader, num_batches)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._packwise_consumed += 1
        out = super().training_step(model, inputs, num_items_in_batch)
        if self.packwise_mixture is not None:  # one sampler batch = one tracker step, on every rank
            self.packwise_mixture.step()
        return out

    # --- loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Token-normalised packed loss (over ``num_items_in_batch`` when the Trainer counted it)."""
        outputs = model(**{k: v for k, v in inputs.items() if k not in _NOT_FOR_MODEL})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        tok = token_losses(logits, inputs["labels"])
        view = {k: inputs[k] for k in ("labels", "seq_idx", "example_index", "loss_weight") if k in inputs}
        policy = self.packwise_policy
        training = policy is not None and model.training
        if training and "example_ids" not in inputs:  # a DDP padding batch: no examples, zero loss
            inputs = {**inputs, "example_ids": torch.zeros(0, dtype=torch.int64)}
        if training and inputs["example_ids"].shape[0]:
            view["loss_weight"] = _token_weights(policy, inputs["example_ids"], inputs)
        denominator = None
        if num_items_in_batch is not None:
            denominator = num_items_in_batch.clamp(min=1) if torch.is_tensor(num_items_in_batch) else max(num_items_in_batch, 1)
        loss = packed_loss(tok, view, denominator=denominator)
        if training:  # the plain (unweighted) loss, logged beside the weighted one
            plain = {k: inputs[k] if k == "loss_weight" else v for k, v in view.items() if k != "loss_weight" or k in inputs}
            self._packwise_plain += packed_loss(tok.detach(), plain, denominator=denominator).detach().float().cpu()
        if training:  # every rank calls update once per micro-batch (it gathers across ranks)
            per_example, _ = example_losses(tok.detach(), inputs)
            policy.update(inputs["example_ids"].cpu(), per_example.cpu()[: inputs["example_ids"].shape[0]])
        if self.packwise_mixture is not None and model.training and "example_ids" in inputs:
            self._packwise_track(tok, inputs)
        if denominator is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, outputs) if return_outputs else loss

    def _packwise_track(self, tok, inputs: dict) -> None:
        """Add this micro-batch's per-example losses to its sources' sums (no collective here)."""
        ids = inputs["example_ids"]
        if ids.shape[0]:  # one fused reduction on the device, no host sync
            self.packwise_mixture.add_packed(tok, inputs, self.packwise_sampler.sources_of(ids.cpu().numpy()))

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds ``plain_loss`` beside ``loss`` while a policy reweights: the mean loss without the policy
        weights, so the curve does not jump when an epoch prunes (InfoBatch scales kept losses by
        ``1/(1-r)``). Same normalisation as ``loss``, this rank's batches."""
        for callback in self.callback_handler.callbacks:  # NoiseScaleCallback: noise_scale, budget
            if "loss" in logs and hasattr(callback, "log_values"):
                logs.update(callback.log_values())
        if "loss" in logs and self.packwise_policy is not None:
            steps = self.state.global_step - self._packwise_plain_step
            if steps > 0:
                logs["plain_loss"] = round(float(self._packwise_plain) / steps, 4)
            self._packwise_plain = torch.zeros(())
            self._packwise_plain_step = self.state.global_step
        if "loss" in logs and self.packwise_mixture is not None:
            logs.update(self.packwise_mixture.logs("loss/"))
        super().log(logs, *args, **kwargs)

    # --- checkpoints -----------------------------------------------------------------------------
    def _packwise_state(self) -> dict:
        sampler = self.packwise_sampler
        consumed = self._packwise_consumed
        if isinstance(sampler, PruningSampler):  # counts examples
            state = sampler.state_at(min(consumed * self._train_batch_size, len(sampler)))
        elif hasattr(sampler, "state_at"):
            state = sampler.state_at(consumed)
        else:
            state = dict(sampler.state_dict())
        policy = self.packwise_policy
        budget = getattr(sampler, "budget", None)
        return {
            "epoch": int(sampler.epoch),
            "batches_consumed": consumed,
            "sampler": state,
            "policy": policy.state_dict() if policy is not None else None,
            "mixture_loss": self.packwise_mixture.state_dict() if self.packwise_mixture is not None else None,
            "budget": budget.state_dict() if budget is not None else None,
        }

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STATE_FILE.format(rank=self.accelerator.process_index))
        save_state(path, self._packwise_state())

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs, steps = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:
            return epochs, steps
        saved = load_state(self._packwise_state_path(resume_from_checkpoint))  # never unpickled
        if saved["policy"] is not None:
            self.packwise_policy.load_state_dict(saved["policy"])
        sampler = self.packwise_sampler
        world = self.accelerator.num_processes
        if saved.get("budget") is not None:  # the schedule first: the sampler's epoch plan follows its changes
            sampler.budget.load_state_dict(saved["budget"])
        sampler.load_state_dict(saved["sampler"])  # validates lengths, settings and seed
        epoch, consumed = int(saved["epoch"]), int(saved["batches_consumed"])
        if self.packwise_mixture is not None:
            return self._packwise_resume_mixture(saved, epoch, consumed)
        if saved["sampler"].get("num_replicas", world) != world:
            return self._packwise_elastic(epoch, num_train_epochs, num_update_steps_per_epoch)
        if hasattr(sampler, "_rewind"):  # the Trainer skips the consumed batches itself
            sampler._rewind()
        else:
            sampler.set_epoch(epoch + 1)
            sampler.set_epoch(epoch)
        if consumed >= len(self.get_train_dataloader()):
            return epoch + 1, 0
        return epoch, (0 if self.args.ignore_data_skip else consumed)

    def _packwise_state_path(self, checkpoint: str) -> str:
        """This rank's state file, or rank 0's for a rank the saving run did not have (every file
        holds the same global state)."""
        rank = self.accelerator.process_index
        path = os.path.join(checkpoint, STATE_FILE.format(rank=rank))
        old = os.path.join(checkpoint, _OLD_STATE_FILE.format(rank=rank))
        if not os.path.isfile(path) and os.path.isfile(old):
            raise ValueError(
                f"{old} is a pickle from an older packwise and packwise no longer unpickles checkpoint files "
                f"(a crafted one runs code); resume with ignore_data_skip=True from a fresh sampler to restart "
                f"the epoch, or re-save the checkpoint with this packwise"
            )
        if not os.path.isfile(path):
            path = os.path.join(checkpoint, STATE_FILE.format(rank=0))
        if not os.path.isfile(path):
            raise ValueError(
                f"{path} is missing: this checkpoint was not written by a packwise trainer; resume from a "
                f"checkpoint folder a PackwiseTrainer saved (it holds packwise_rank0.npz)"
            )
        return path

    def _packwise_elastic(self, epoch: int, num_train_epochs: int, updates_per_epoch: int) -> tuple[int, int]:
        """Resume under another world size: the sampler deals the rest of the epoch from its global
        cursor, so the Trainer skips nothing; the run ends after the epochs it was asked for."""
        rest = len(self.get_train_dataloader())  # this world's steps left in the epoch
        if rest == 0:
            return epoch + 1, 0
        if self.args.max_steps <= 0:  # a step count sized for another world size would stop early or late
            later = max(int(num_train_epochs) - epoch - 1, 0) * updates_per_epoch
            self.state.max_steps = self.state.global_step + math.ceil(rest / self.args.gradient_accumulation_steps) + later
        return epoch, 0

    def _packwise_resume_mixture(self, saved: dict, epoch: int, consumed: int) -> tuple[int, int]:
        """A mixture sampler stays where its state put it (the rest of the epoch); the tracker
        gets back this rank's steps and unreduced sums of the interval in progress."""
        if saved.get("mixture_loss") is None:
            raise ValueError(
                "this checkpoint has no per-source loss state (it was not written with a MixtureSampler); "
                "resume with the sampler the run was started with"
            )
        if self.args.ignore_data_skip:
            raise ValueError(
                "ignore_data_skip=True restarts the epoch, but a MixtureSampler's plan after a checkpoint depends on "
                "the policy state it saved; resume without ignore_data_skip (the rest of the epoch, exactly)"
            )
        self.packwise_mixture.load_state_dict(saved["mixture_loss"])
        if consumed >= len(self.get_train_dataloader()):
            return epoch + 1, 0
        self._packwise_resumed_mixture = True
        return epoch, consumed


class NoiseScaleCallback(TrainerCallback):
    """Measures the gradient noise scale every optimizer step, feeds a token-budget schedule and
    scales the learning rate with it; ``PackwiseTrainer`` logs ``noise_scale`` (and ``budget``).

    ``trainer.add_callback(NoiseScaleCallback(schedule, rule="sqrt"))``.  One process with
    ``gradient_accumulation_steps >= 2``: the micro-steps are the small batches and the step the big
    one (:class:`~packwise.selection.AccumulationNoiseSource`, no extra backward).  Under DDP (a
    ``PackwiseTrainer`` on several processes): each rank's local step gradient against the
    all-reduced one, read in DDP's own all-reduce (:class:`~packwise.selection.DDPNoiseSource`, no
    extra backward, one more two-float all-reduce per step), so every rank logs the same value and
    steps the schedule identically.  Sizes are the
    micro-batches' tokens (``attention_mask`` sum, else ``input_ids`` size), so ``noise_scale`` is
    in tokens, the unit of the budget.  ``schedule`` (optional): a ``RampBudget`` or
    ``AdaptiveBudget`` stepped with the step's tokens and ``B_noise``; ``rule``: ``"linear"``,
    ``"sqrt"`` or ``"none"`` against ``base_budget`` (default: the schedule's first budget).  Give
    the same schedule to the sampler (``budget=``) so batches follow it.
    ``PackwiseTrainer`` checkpoints hold the sampler's schedule and resume it exactly; the noise
    scale's running averages start afresh on resume (they settle within ``1 / (1 - beta)`` steps).
    """

    def __init__(self, schedule=None, *, rule: str = "none", base_budget: int | None = None, beta: float = 0.95):
        self.schedule, self.rule, self.base_budget = schedule, rule, base_budget
        self.gns = GradientNoiseScale(beta)
        self.history: list[dict] = []  # per optimizer step: step, noise_scale, budget
        self._source: AccumulationNoiseSource | None = None
        self._ddp: DDPNoiseSource | None = None  # world size > 1: bound to the DDP-wrapped model
        self._wrapped = None
        self._scaler: LRScaler | None = None
        self._hook = None
        self._open: int | None = None
        self._tokens = 0
        self._micro = 0  # micro-batches (forwards) in the current optimizer step

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.world_size == 1 and args.gradient_accumulation_steps < 2:
            raise ValueError(
                "NoiseScaleCallback needs gradient_accumulation_steps >= 2 (the micro-steps are its small batches); "
                "set TrainingArguments(gradient_accumulation_steps=2) or more"
            )
        if args.world_size == 1:
            self._source = AccumulationNoiseSource(model)
        self._hook = model.register_forward_pre_hook(self._forward, with_kwargs=True)
        if self.schedule is not None and self.rule != "none":
            self._scaler = LRScaler(optimizer, self.schedule, self.rule, self.base_budget)
            self._scaler.rescale()

    def bind_wrapped(self, wrapped, args) -> None:
        """Under DDP, read the gradients in the wrapped model's all-reduce (``PackwiseTrainer`` calls
        this before each epoch, ahead of the first backward; a second call is a no-op)."""
        if args.world_size == 1 or wrapped is self._wrapped:
            return
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(wrapped, DistributedDataParallel):
            raise ValueError(
                f"NoiseScaleCallback under world_size={args.world_size} reads each rank's gradient in DDP's all-reduce, "
                f"but the Trainer wrapped the model in {type(wrapped).__name__}; train with plain DDP (no FSDP or "
                f"DeepSpeed), or on one process with gradient_accumulation_steps >= 2"
            )
        self._ddp, self._wrapped = DDPNoiseSource(wrapped), wrapped

    def _forward(self, module, args, kwargs):
        """A training forward opens a micro-step (and closes the one before, whose backward is done)."""
        if not (module.training and torch.is_grad_enabled()):
            return None
        if self._source is None and self._ddp is None:
            raise ValueError(
                "NoiseScaleCallback under DDP needs a PackwiseTrainer (it hands the callback the DDP-wrapped model, "
                "whose all-reduce the callback reads); train with packwise.integrations.hf.PackwiseTrainer, or on "
                "one process with gradient_accumulation_steps >= 2"
            )
        if self._source is not None and self._open is not None:
            self._source.micro_step(self._open)
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids", args[0] if args else None)
        self._open = int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())
        self._tokens += self._open
        self._micro += 1
        return None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._ddp is not None:  # this rank's tokens in, the step's global tokens out
            measured = self._ddp.measure(self._tokens)
            self._tokens, self._open = int(round(measured[3])), None
            self.gns.update(*measured)
            return
        if self._open is not None:
            self._source.micro_step(self._open)
            self._open = None
        measured = self._source.measure()
        if measured is not None:
            self.gns.update(*measured)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._scaler is not None:  # the base schedule steps next, on the unscaled learning rate
            self._scaler.unscale()

    def on_step_end(self, args, state, control, **kwargs):
        if self.schedule is not None:
            noise = self.gns.value if self.gns.updates else None
            self.schedule.step(self._tokens, noise=noise, batches=max(self._micro, 1))
        if self._scaler is not None:
            self._scaler.rescale()
        self._tokens = self._micro = 0
        self.history.append(self.log_values() | {"step": state.global_step})

    def log_values(self) -> dict:
        out = {"noise_scale": round(self.gns.value, 2) if self.gns.updates else float("nan")}
        if self.schedule is not None:
            out["budget"] = int(self.schedule.budget)
        return out

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            if self._source is not None:
                self._source.close()
            self._hook = None


class PackwiseTrainer(PackwiseTrainerMixin, Trainer):
    """``transformers.Trainer`` on packwise batches.

    Example (a tiny random Llama, two optimizer steps)::

        >>> import numpy as np, transformers
        >>> from packwise.samplers import PackedBatchSampler
        >>> from packwise.integrations.hf import PackwiseTrainer
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                                num_attention_heads=2, num_key_value_heads=1)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> data = [{"input_ids": list(range(1, 2 + n))} for n in (5, 9, 3, 7)]
        >>> sampler = PackedBatchSampler(np.array([len(d["input_ids"]) for d in data]), max_tokens=16)
        >>> args = transformers.TrainingArguments("/tmp/pw-doctest", max_steps=2, report_to=[], use_cpu=True)
        >>> result = PackwiseTrainer(model, args, train_dataset=data, sampler=sampler).train()
        {'train_runtime': ...}
        >>> result.global_step
        2
    """


def _sft_trainer():
    try:
        from trl import SFTTrainer
    except ImportError as err:  # pragma: no cover - the extra is missing
        raise ImportError("PackwiseSFTTrainer needs trl: pip install 'packwise[hf]'") from err
    return SFTTrainer


def __getattr__(name: str):
    # TRL is imported only when PackwiseSFTTrainer is asked for (it is slow to import)
    if name == "PackwiseSFTTrainer":
        cls = type(
            "PackwiseSFTTrainer",
            (PackwiseTrainerMixin, _sft_trainer()),
            {
                "__doc__": "TRL ``SFTTrainer`` on packwise batches (same arguments as :class:`PackwiseTrainer`).",
                "__module__": __name__,
            },
        )
        globals()[name] = cls
        return cls
    raise AttributeError(name)


__all__ = ["IdsCollator", "IndexedExamples", "NoiseScaleCallback", "PackwiseSFTTrainer", "PackwiseTrainer", "PackwiseTrainerMixin", "STATE_FILE"]
