"""``ls-seq evaluate``: the calibration of a saved checkpoint, measured in one teacher-forced pass.

For a local HF checkpoint (``save_pretrained`` output: a causal LM or an encoder-decoder, told apart by its
config; verified before its weights load by :func:`ls_seq.checkpoints.verify_checkpoint`, against its
``ls_seq_checksums.json`` when ls-seq wrote one) and evaluation data (:mod:`ls_seq.cli.eval_data`): every field of :class:`ls_seq.calibration.metric.TokenCalibration`
at every temperature of the grid, from one forward pass per batch; the NLL-optimal temperature
(:func:`ls_seq.fit_temperature`) on the same tokens or on another split; with ``bleu`` on an encoder-decoder,
beam-search BLEU at every temperature (:func:`ls_seq.hf.sweeps.beam_search_sweep`). Under ``torchrun`` /
``accelerate launch`` each process takes its shard of the examples (:func:`ls_seq.hf.sweeps.shard_indices`), the
metric sums its state over processes, the temperature fit sums its Newton terms, and the main process writes
(:mod:`ls_seq.calibration.report`): the numbers of one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ls_seq.errors import InputError

__all__ = ["EvaluateConfig", "evaluate_checkpoint", "load_checkpoint", "load_config_and_tokenizer"]

DTYPES = ("float32", "bfloat16")


@dataclass
class EvaluateConfig:
    """The arguments of ``ls-seq evaluate`` (see ``ls-seq evaluate --help``), checked in :meth:`check`."""

    model: str
    data: str
    output_dir: str
    tokenizer: str | None = None
    split: str = "test"
    source_lang: str = "en"
    target_lang: str = "de"
    temperatures: list[float] | None = None
    n_bins: int = 15
    measures: list[str] | None = None
    fit_split: str | None = None
    bleu: bool = False
    num_beams: int = 4
    generate_batch_size: int = 32
    max_new_tokens: int | None = None
    max_samples: int | None = None
    batch_size: int = 16
    max_length: int = 512
    dtype: str = "float32"
    device: str | None = None
    fit_max_gib: float = 4.0
    command: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        from ls_seq.checks import check_choice, check_positive_int, check_temperatures
        from ls_seq.io import check_output_dir

        check_output_dir(self.output_dir, "--output_dir")
        check_choice(self.dtype, "--dtype", DTYPES)
        if self.temperatures is not None:
            self.temperatures = check_temperatures(self.temperatures, "--temperatures")
        for name in ("n_bins", "num_beams", "generate_batch_size", "batch_size", "max_length"):
            check_positive_int(getattr(self, name), f"--{name}")
        for name in ("max_samples", "max_new_tokens"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), f"--{name}")
        if not self.fit_max_gib > 0:
            raise InputError(f"`--fit_max_gib` must be > 0, got {self.fit_max_gib}")
        if self.bleu:
            from ls_seq._extras import require_extra

            require_extra("bleu", feature="`--bleu`")  # before any work, not after the teacher-forced pass


def load_config_and_tokenizer(model_dir: str, tokenizer_dir: str | None):
    """``(config, tokenizer)`` of a local checkpoint, before any weights are read; every problem an
    :class:`~ls_seq.errors.InputError` naming the path."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir() or not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise InputError(f"`model` {model_dir!r} {what}: give a checkpoint directory written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise InputError(
            f"`model` {model_dir!r}: transformers cannot read its config.json: {' '.join(str(err).split())[:300]}"
        ) from err
    tok_path = Path(tokenizer_dir) if tokenizer_dir else path
    has_tokenizer = any(
        (tok_path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")
    )
    if not tok_path.is_dir() or not has_tokenizer:
        raise InputError(
            f"`{'tokenizer' if tokenizer_dir else 'model'}` {str(tok_path)!r} holds no tokenizer: save it beside the "
            "model (tokenizer.save_pretrained) or give --tokenizer DIR"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise InputError(f"`tokenizer` {str(tok_path)!r} cannot be loaded: {' '.join(str(err).split())[:300]}") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise InputError(f"the tokenizer in {str(tok_path)!r} has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer


def load_checkpoint(model_dir: str, config: Any, dtype: str, device: str | torch.device):
    """The model: ``AutoModelForSeq2SeqLM`` for an encoder-decoder config, ``AutoModelForCausalLM`` otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(str(model_dir), local_files_only=True, dtype=getattr(torch, dtype))
    except (ValueError, KeyError, OSError) as err:
        raise InputError(
            f"`model` {model_dir!r} ({config.model_type}) cannot be loaded as a {cls.__name__}: {' '.join(str(err).split())[:300]}"
        ) from err
    # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed type loses the bound self
    return model.to(device).eval()  # type: ignore[arg-type]


def _process_state(device: str | None):
    """``(device, rank, world)``: joins the process group when launched with several processes."""
    from accelerate import PartialState

    from ls_seq.hf.distributed import dist_info

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)  # initialises the process group under torchrun / accelerate launch
    rank, world = dist_info()
    return torch.device(device) if device else state.device, rank, world


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        t = t.to(device)
        torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def _batches(examples, indices, collator, batch_size):
    for start in range(0, len(indices), batch_size):
        yield collator([examples[i] for i in indices[start : start + batch_size]])


def _teacher_forced_pass(model, tokenizer, data, cfg, device, rank, metric, keep_logits: bool, desc: str):
    """Feed every batch of this process's shard to ``metric``; returns its scored ``(logits, labels)`` if kept."""
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq

    from ls_seq.hf.model_io import teacher_forced_logits
    from ls_seq.hf.sweeps import shard_indices

    collator = DataCollatorForSeq2Seq(tokenizer, model=model if model.config.is_encoder_decoder else None)
    indices = shard_indices(len(data.examples))
    kept_logits, kept_labels = [], []
    n_batches = -(-len(indices) // cfg.batch_size)
    with torch.no_grad():
        for batch in tqdm(
            _batches(data.examples, indices, collator, cfg.batch_size),
            total=n_batches,
            desc=desc,
            disable=rank != 0,
            unit="batch",
        ):
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            logits, scored = teacher_forced_logits(model, batch)
            if metric is not None:
                metric.update(logits, scored)
            if keep_logits:
                keep = scored != -100
                kept_logits.append(logits[keep].float().cpu())
                kept_labels.append(scored[keep].cpu())
    if not keep_logits:
        return None
    vocab = (
        model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else model.config.vocab_size
    )
    if not kept_logits:
        return torch.empty(0, vocab), torch.empty(0, dtype=torch.long)
    return torch.cat(kept_logits), torch.cat(kept_labels)


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict[str, Any]:
    """Measure, write the outputs (main process), and return ``calibration.json``'s content."""
    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq.calibration.report import calibration_document, write_calibration_outputs
    from ls_seq.checkpoints import verify_checkpoint
    from ls_seq.cli.eval_data import read_records, tokenize_records
    from ls_seq.functional.temperature import fit_temperature

    cfg.check()
    config, tokenizer = load_config_and_tokenizer(cfg.model, cfg.tokenizer)
    causal = not getattr(config, "is_encoder_decoder", False)
    if cfg.bleu and causal:
        raise InputError(f"`--bleu` needs an encoder-decoder (it translates sources); {cfg.model!r} is a causal LM")
    read: dict[str, Any] = dict(
        split=cfg.split, source_lang=cfg.source_lang, target_lang=cfg.target_lang, max_samples=cfg.max_samples
    )
    data = tokenize_records(read_records(cfg.data, **read), tokenizer, causal=causal, max_length=cfg.max_length, path=cfg.data)
    fit_data = None
    if cfg.fit_split is not None:
        fit_path = cfg.fit_split if os.path.exists(cfg.fit_split) else cfg.data
        fit_records = read_records(fit_path, **{**read, "split": cfg.fit_split if fit_path == cfg.data else cfg.split})
        fit_data = tokenize_records(fit_records, tokenizer, causal=causal, max_length=cfg.max_length, path=fit_path)
    device, rank, world = _process_state(cfg.device)
    fit_tokens = sum(sum(1 for t in ex["labels"][1 if causal else 0 :] if t != -100) for ex in (fit_data or data).examples)
    vocab = config.vocab_size
    need_gib = fit_tokens * vocab * 4 / 2**30 / world
    if need_gib > cfg.fit_max_gib:
        raise InputError(
            f"fitting the temperature keeps the logits of {fit_tokens} tokens x V = {vocab} ({need_gib:.1f} GiB per "
            f"process), more than --fit_max_gib {cfg.fit_max_gib}: raise it, or fit on a smaller --fit_split, or --max_samples"
        )
    # Only now (bad input is refused before this): every file checked against the manifest ls-seq wrote beside
    # it (a CheckpointError naming the file, exit 1), or structurally with a warning when it has none.
    verify_checkpoint(cfg.model, require=())
    model = load_checkpoint(cfg.model, config, cfg.dtype, device)

    grid = sorted(set(cfg.temperatures or [1.0]) | {1.0})
    metric = TokenCalibration(n_bins=cfg.n_bins, temperatures=grid, measures=cfg.measures).to(device)
    kept = _teacher_forced_pass(
        model, tokenizer, data, cfg, device, rank, metric, keep_logits=fit_data is None, desc="teacher-forced pass"
    )
    if fit_data is not None:
        kept = _teacher_forced_pass(
            model, tokenizer, fit_data, cfg, device, rank, None, keep_logits=True, desc=f"fit split {cfg.fit_split}"
        )
    result = metric.compute()  # every process: the sums of all of them
    reliability: dict[str, dict[str, torch.Tensor]] = {
        b: metric.reliability(b) for b in ("width", "mass") if b in metric.schema.binnings()
    }
    i1 = grid.index(1.0)
    reliability = {b: {k: v[i1] for k, v in curves.items()} for b, curves in reliability.items()}
    fitted = fit_temperature(*kept, all_reduce=_all_reduce_sum if world > 1 else None)

    bleu = None
    if cfg.bleu:
        from ls_seq.hf.sweeps import beam_search_sweep, corpus_bleu

        assert data.sources is not None and data.targets is not None  # seq2seq data: --bleu refused a causal LM
        translations = beam_search_sweep(
            model,
            tokenizer,
            data.sources,
            grid,
            num_beams=cfg.num_beams,
            batch_size=cfg.generate_batch_size,
            max_source_length=cfg.max_length,
            max_new_tokens=cfg.max_new_tokens or cfg.max_length,
            progress=rank == 0,
        )
        bleu = {t: corpus_bleu(translations[t], data.targets) for t in grid}

    about = {
        "command": cfg.command,
        "model": str(cfg.model),
        "model_type": model.config.model_type,
        "kind": "causal" if causal else "seq2seq",
        "data": str(cfg.data),
        "data_form": list(data.form),
        "split": cfg.split if Path(cfg.data).is_dir() else None,
        "n_examples": len(data.examples),
        "n_tokens": int(result.at(1.0)["n_tokens"]),
        "dtype": cfg.dtype,
        "num_processes": world,
        "n_bins": cfg.n_bins,
        "num_beams": cfg.num_beams if cfg.bleu else None,
    }
    doc = calibration_document(
        result,
        reliability,
        fitted_temperature=fitted,
        fit_on=f"split {cfg.fit_split!r}" if cfg.fit_split else "the evaluated tokens",
        bleu=bleu,
        about=about,
    )
    if rank == 0:
        write_calibration_outputs(cfg.output_dir, doc, title=Path(cfg.model).name)
    if world > 1:
        torch.distributed.barrier()
    return doc
