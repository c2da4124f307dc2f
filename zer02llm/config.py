"""Typed configuration: one dataclass per config group, the checks that reject bad combinations.

The YAML files in `conf/` only pick presets and set values; every key has its type and default here.
Hydra is imported only inside `register_configs()`, which the entry points call, so the model,
data and trainer code stay free of any config framework (they take these plain dataclasses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

ATTENTION_IMPLS = ("sdpa", "math")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOGGERS = ("none", "wandb")


@dataclass
class ModelConfig:
    """Decoder-only Transformer; defaults follow minimind (26M at dim 512, 8 layers)."""

    name: str = "dense"
    vocab_size: int = 6400
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 2
    # SwiGLU width; null means 64 * ceil(8 * dim / 3 / 64)
    hidden_dim: Optional[int] = None
    max_seq_len: int = 32768
    rope_theta: float = 1e6
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True
    # "sdpa": torch's scaled_dot_product_attention (flash / memory-efficient kernels);
    # "math": plain matmul-softmax-matmul, the reference the tests compare against
    attention: str = "sdpa"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return 64 * math.ceil(8 * self.dim / 3 / 64)


@dataclass
class MoEConfig(ModelConfig):
    """Mixture-of-Experts: each chosen layer's feed-forward becomes routed + shared SwiGLU experts."""

    name: str = "moe"
    num_experts: int = 4  # routed experts
    experts_per_token: int = 2  # top-k
    num_shared_experts: int = 1  # always-on experts; 0 means none
    norm_topk_prob: bool = True  # renormalise the k chosen router probabilities to sum to 1
    aux_loss_alpha: float = 0.01  # weight of the load-balancing loss
    seq_aux: bool = True  # balance per sequence (true) or over the whole batch (false)
    router_z_loss: float = 0.0  # weight of mean(logsumexp(router logits)^2); 0 disables it
    moe_layer_interval: int = 1  # layer i is MoE when (i + 1) % interval == 0: 1 = every layer
    capacity_factor: float = 0.0  # 0: dropless; > 0: each expert takes ceil(cf * tokens * k / E) pairs
    # width of each expert; null: the dense SwiGLU width (64 * ceil(8 * dim / 3 / 64))
    expert_hidden_dim: Optional[int] = None

    @property
    def expert_ffn_dim(self) -> int:
        return self.expert_hidden_dim if self.expert_hidden_dim is not None else self.ffn_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (layer_idx + 1) % self.moe_layer_interval == 0


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Rebuild the right model config class from a saved dict (checkpoint config.json)."""
    cls = MoEConfig if values.get("name") == "moe" else ModelConfig
    return cls(**values)


MODES = ("pretrain", "sft", "dpo")
DPO_LOSSES = ("sigmoid", "ipo")  # built by zer02llm/training/dpo.py
PACKINGS = ("concat", "bos_aligned")  # built by zer02llm/data/packing.py


@dataclass
class ModeConfig:
    """Training stage: "pretrain" (packed {"text"} documents), "sft" (chat, assistant tokens only) or
    "dpo" (preference pairs against the frozen mode.init_from model; the beta/label_smoothing/loss keys)."""

    name: str = "pretrain"
    # start from these weights (a checkpoint or run directory): fresh optimizer, step 0
    init_from: Optional[str] = None
    # DPO only: how far the policy may move from the reference (rewards are beta * log-prob ratios)
    beta: float = 0.1
    # DPO only: the assumed share of flipped preference labels (conservative DPO); 0: plain DPO
    label_smoothing: float = 0.0
    # DPO only: "sigmoid" (DPO's -log sigmoid(beta * h)) or "ipo" ((h - 1 / (2 * beta))^2)
    loss: str = "sigmoid"


@dataclass
class LoRAConfig:
    """Low-rank adapters on chosen linear layers; everything else frozen. rank 0 turns LoRA off."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # module name suffixes: attention q/k/v/o by default; add gate_proj/up_proj/down_proj for the
    # feed-forward (in MoE models: the shared experts)
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class HardwareConfig:
    name: str = "cpu"
    # "auto" picks CUDA when present; "cuda" insists on it (the GPU presets), "cpu" never uses it
    device: str = "auto"
    # "auto": bfloat16 on GPUs that support it, else float16; float32 on CPU
    dtype: str = "auto"
    compile: bool = False
    # torch's intra-op CPU threads (torch.set_num_threads); null or 0: torch's default, one per core.
    # Fewer threads than cores keeps a CPU run fast when other processes share the cores (README)
    threads: Optional[int] = None


@dataclass
class DataConfig:
    # a file (JSONL, .jsonl.gz, .jsonl.zst, Parquet), a directory of them, a glob, or a list of these;
    # null: the small sample corpus shipped inside the package (zer02llm/sample_data/)
    train_path: Any = None
    # the same forms; "auto": the sample corpus's own validation file when training on it, else none;
    # null: no validation
    val_path: Any = "auto"
    # weighted sources instead of train_path: {name: {path: ..., weight: ..., val_path: ...}}, or the path
    # of a YAML file holding `mixture: {...}` (e.g. conf/data/mixture_example.yaml); weights are shares of tokens
    mixture: Any = None
    # the column (Parquet) or key (JSONL) holding a pretraining document's text
    text_column: str = "text"
    seq_len: int = 512
    # where tokenized corpora are cached; null: $XDG_CACHE_HOME/zer02llm or ~/.cache/zer02llm
    cache_dir: Optional[str] = None
    # true: the first malformed line is an error instead of being skipped and counted
    strict: bool = False
    # pretraining windows: "concat" cuts the stream of documents anywhere; "bos_aligned" starts every
    # window at a document's bos (longer documents cut, shorter ones packed best-fit; see README)
    packing: str = "concat"
    # true: a token attends only to earlier tokens of its own document within a packed window
    document_mask: bool = False


@dataclass
class TokenizerConfig:
    # a directory with tokenizer.json (+ tokenizer_config.json); null: the shipped tokenizer/
    path: Optional[str] = None


@dataclass
class TrainConfig:
    seed: int = 1337
    batch_size: int = 16
    grad_accum: int = 1
    # optimizer steps; -1: as many as `epochs` passes over the training data take
    max_steps: int = -1
    epochs: float = 1.0
    # compute-matched runs (zer02llm/training/budget.py): the steps come from a budget instead, rounded to the
    # nearest whole step, and max_steps/epochs are not read. token_budget: tokens to train on (one step
    # trains batch_size x grad_accum x world_size x seq_len); flops_budget: training FLOPs, flops_per_token
    # x tokens (6 * N_matmul + 12 * n_layers * dim * seq_len per token, scripts/bench.py). At most one; null: off
    token_budget: Optional[float] = None
    flops_budget: Optional[float] = None
    lr: float = 5e-4
    # cosine decay ends at lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    # clip the global gradient norm to this; 0 disables clipping
    grad_clip: float = 1.0
    log_interval: int = 10
    eval_interval: int = 200
    # batches per evaluation; -1: the whole validation set
    eval_batches: int = 50
    save_interval: int = 500
    keep_checkpoints: int = 3
    # a checkpoint directory, or "auto" for the latest one in this run's directory
    resume: Optional[str] = None


OPTIMIZERS = ("adamw", "muon")
MUON_LR_ADJUSTMENTS = ("original", "match_rms_adamw")


@dataclass
class OptimConfig:
    """The optimizer. "adamw": AdamW on every trained parameter at train.lr (train.weight_decay, beta1,
    beta2). "muon": Muon on the hidden weight matrices (attention and feed-forward projections, each routed
    expert's), AdamW as above on the rest (embeddings, LM head, norms, routers, LoRA adapters).
    The muon_* keys are read with name=muon only."""

    name: str = "adamw"
    # peak lr of the Muon groups; the schedule (train.warmup_steps, min_lr_ratio) scales it as it does train.lr
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    # decoupled: each step multiplies the matrices by 1 - lr * muon_weight_decay (0: none, as Keller Jordan's Muon)
    muon_weight_decay: float = 0.0
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    # "original": lr * sqrt(max(1, out/in)) (Keller Jordan's, for lr ~0.02); "match_rms_adamw":
    # lr * 0.2 * sqrt(max(out, in)), the update's RMS of AdamW's (Moonshot's, for an AdamW-sized lr)
    muon_adjust_lr: str = "original"


@dataclass
class DistributedConfig:
    # "ddp": every rank holds the whole model; "fsdp": parameters, gradients and optimizer state
    # sharded across ranks (PyTorch's FSDP2, fully_shard), for models that do not fit one GPU
    strategy: str = "ddp"


@dataclass
class WandbConfig:
    project: str = "zer02llm"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # "none" or "wandb" (offline automatically when no API key is configured)
    logger: str = "none"
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class SamplingOptions:
    """What `generate` and `eval` share: the model to load and how to sample from it."""

    # a checkpoint directory (…/checkpoints/step_0000100 or …/checkpoints/last) or a run directory
    checkpoint: Optional[str] = None
    # a LoRA adapter directory (…/checkpoints/step_N/adapter) merged into the checkpoint's weights
    adapter: Optional[str] = None
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 0.9  # 1: off
    repetition_penalty: float = 1.1  # 1: off
    seed: Optional[int] = None
    device: str = "auto"
    # decode through a static KV cache with the one-token step torch.compiled (a CUDA graph on GPUs):
    # the same tokens, faster once compiled; the first reply waits for the compile
    compile: bool = False
    # torch's CPU threads (null/0: one per core); 1 keeps generation fast when other processes share the
    # cores (on 2 cores under load: 690-1,370 tokens/s at 1 thread, 26 at 2), at ~12% cost when idle
    threads: Optional[int] = 1
    stream: bool = True
    # null: the tokenizer the checkpoint was trained with
    tokenizer_path: Optional[str] = None


@dataclass
class GenerateConfig(SamplingOptions):
    """`python -m zer02llm.generate`: continue one prompt."""

    prompt: str = ""


@dataclass
class EvalConfig(SamplingOptions):
    """`python -m zer02llm.eval`: talk to a model, interactively or over a list of prompts."""

    # true: chat with the template (SFT models); false: plain continuation (pretrained models);
    # null: chat when the checkpoint was trained with mode=sft or mode=dpo
    chat: Optional[bool] = None
    system_prompt: Optional[str] = None
    # earlier exchanges kept in the conversation (0: every prompt starts afresh)
    history_turns: int = 0
    prompts: list[str] = field(default_factory=list)
    # a text file, one prompt per line (blank lines skipped)
    prompts_file: Optional[str] = None
    # where results go as JSONL ({"prompt", "response", ...} per line); null: only the terminal
    output: Optional[str] = None


@dataclass
class ExportConfig:
    """`python -m zer02llm.export`: a checkpoint as a transformers model directory (README: Using your model elsewhere)."""

    # a checkpoint directory (…/checkpoints/last) or a run directory (its newest checkpoint)
    checkpoint: Optional[str] = None
    # the new directory; one that exists and holds files is refused unless overwrite=true
    output: Optional[str] = None
    overwrite: bool = False
    # a LoRA adapter directory merged into the checkpoint's weights (a LoRA run's own adapters are merged anyway)
    adapter: Optional[str] = None
    # null: the tokenizer the checkpoint was trained with
    tokenizer_path: Optional[str] = None
    # the exported weights' dtype; "auto": as the checkpoint stores them
    dtype: str = "auto"
    # above this, model.safetensors is split into shards with an index (as transformers' save_pretrained does)
    max_shard_size: str = "5GB"
    # a model trained with model.capacity_factor > 0 drops overflowing tokens; transformers' MoE never does.
    # true: export it anyway, as the dropless model
    allow_dropless: bool = False


@dataclass
class EngineConfig:
    """The inference engine's knobs (zer02llm/inference/engine/, docs/serving.md): serve's `engine.*` keys,
    and `LLM(checkpoint, **knobs)`."""

    # sequences decoded together: every running request is one row of each decode step's forward
    max_batch: int = 32
    # KV cache size in tokens, all requests together; a request waits while its prompt does not fit
    kv_budget_tokens: int = 32768
    # tokens per cache block: the unit of allocation and of prefix sharing
    block_size: int = 16
    # prompt tokens computed per step, all prefilling requests together: a long prompt is split over
    # several steps so that the running requests keep decoding meanwhile
    prefill_chunk: int = 512
    # requests allowed to wait for a place in the batch; beyond, a new request is refused (HTTP 429)
    max_queue: int = 256
    # reuse the KV of prompt prefixes already computed (same system prompt, n>1, repeated prompts)
    prefix_caching: bool = True
    # on CUDA: replay decode steps as CUDA graphs (captured per batch-size bucket); ignored on the CPU
    cuda_graphs: bool = True
    # the context a CUDA graph's decode step covers; a step with a longer sequence runs eagerly
    cuda_graph_max_len: int = 2048


def engine_problems(engine: EngineConfig, prefix: str = "") -> list[str]:
    problems = []
    for name in ("max_batch", "kv_budget_tokens", "block_size", "prefill_chunk", "max_queue", "cuda_graph_max_len"):
        value = getattr(engine, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{prefix}{name}={value}: must be an integer >= 1")
    if not problems and engine.kv_budget_tokens < engine.block_size:
        problems.append(f"{prefix}kv_budget_tokens={engine.kv_budget_tokens}: must hold at least one block "
                        f"({prefix}block_size={engine.block_size})")
    return problems


@dataclass
class ServeConfig(SamplingOptions):
    """`python -m zer02llm.serve`: the OpenAI HTTP API over a checkpoint (README: Serving, docs/serving.md).

    The sampling keys are the defaults of a request that does not set them: OpenAI's own by default
    (temperature 1, top_p 1, no penalty); max_new_tokens for a missing max_tokens, seed for a missing seed.
    top_k and repetition_penalty, which OpenAI's API lacks, apply to every request that does not set them
    (as vLLM's extra fields). `stream` is the request's own choice; the key is unused here."""

    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    # the `model` that requests name and /v1/models lists; null: the run directory's name
    model_name: Optional[str] = None
    # the inference engine: batch size, KV cache budget, prefill chunk, queue bound (engine.max_batch=16, ...)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # uvicorn's log level (critical, error, warning, info, debug, trace); info logs one line per request
    log_level: str = "info"


class ConfigError(ValueError):
    """A bad configuration; the message lists every problem found, each naming key, value and fix."""


def _require_positive(problems: list[str], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if value is None or value <= 0:
            problems.append(f"{key}={value}: must be > 0")


def model_problems(model: ModelConfig) -> list[str]:
    """What is wrong with a model configuration (empty when it is valid)."""
    problems: list[str] = []
    _require_positive(
        problems,
        {
            "model.vocab_size": model.vocab_size,
            "model.dim": model.dim,
            "model.n_layers": model.n_layers,
            "model.n_heads": model.n_heads,
            "model.n_kv_heads": model.n_kv_heads,
            "model.max_seq_len": model.max_seq_len,
            "model.rope_theta": model.rope_theta,
            "model.norm_eps": model.norm_eps,
        },
    )
    if model.hidden_dim is not None and model.hidden_dim <= 0:
        problems.append(f"model.hidden_dim={model.hidden_dim}: must be > 0, or null for the SwiGLU default")
    if problems:  # the divisibility checks below would only repeat them
        return problems
    if model.dim % model.n_heads:
        problems.append(
            f"model.dim={model.dim} is not divisible by model.n_heads={model.n_heads}: "
            f"pick n_heads among the divisors of dim, e.g. {_divisors_near(model.dim, model.n_heads)}"
        )
    elif model.head_dim % 2:
        problems.append(
            f"model.dim / model.n_heads = {model.head_dim} is odd: rotary embeddings rotate pairs "
            f"of channels, so the head dimension must be even"
        )
    if model.n_heads % model.n_kv_heads:
        problems.append(
            f"model.n_heads={model.n_heads} is not divisible by model.n_kv_heads={model.n_kv_heads}: "
            f"grouped-query attention shares each KV head among n_heads / n_kv_heads query heads"
        )
    if not 0.0 <= model.dropout < 1.0:
        problems.append(f"model.dropout={model.dropout}: must be in [0, 1)")
    if model.attention not in ATTENTION_IMPLS:
        problems.append(f"model.attention={model.attention!r}: must be one of {', '.join(ATTENTION_IMPLS)}")
    if isinstance(model, MoEConfig):
        problems += moe_problems(model)
    return problems


def moe_problems(moe: MoEConfig) -> list[str]:
    problems: list[str] = []
    _require_positive(problems, {"model.num_experts": moe.num_experts, "model.experts_per_token":
                                 moe.experts_per_token, "model.moe_layer_interval": moe.moe_layer_interval})
    if moe.num_experts > 0 and moe.experts_per_token > moe.num_experts:
        problems.append(f"model.experts_per_token={moe.experts_per_token} exceeds model.num_experts="
                        f"{moe.num_experts}: a token can visit at most every expert once")
    if moe.moe_layer_interval > moe.n_layers > 0:
        problems.append(f"model.moe_layer_interval={moe.moe_layer_interval} exceeds model.n_layers={moe.n_layers}: "
                        f"no layer would be MoE")
    for key, value in {"model.num_shared_experts": moe.num_shared_experts, "model.aux_loss_alpha": moe.aux_loss_alpha,
                       "model.router_z_loss": moe.router_z_loss, "model.capacity_factor": moe.capacity_factor}.items():
        if value < 0:
            problems.append(f"{key}={value}: must be >= 0")
    if moe.expert_hidden_dim is not None and moe.expert_hidden_dim <= 0:
        problems.append(f"model.expert_hidden_dim={moe.expert_hidden_dim}: must be > 0, or null for the dense width")
    return problems


def dpo_problems(mode: ModeConfig) -> list[str]:
    """What is wrong with mode=dpo's settings (empty when they are valid)."""
    problems: list[str] = []
    if not (math.isfinite(mode.beta) and mode.beta > 0):
        problems.append(f"mode.beta={mode.beta}: must be > 0 (0.1 is usual; smaller lets the model move further "
                        f"from the reference)")
    if not 0.0 <= mode.label_smoothing < 0.5:
        problems.append(f"mode.label_smoothing={mode.label_smoothing}: must be in [0, 0.5) (the share of "
                        f"preference labels assumed flipped; 0 is plain DPO)")
    if mode.loss not in DPO_LOSSES:
        problems.append(f"mode.loss={mode.loss!r}: must be one of {', '.join(DPO_LOSSES)}")
    if mode.loss == "ipo" and mode.label_smoothing > 0:
        problems.append(f"mode.label_smoothing={mode.label_smoothing} with mode.loss=ipo: label smoothing is "
                        f"for the sigmoid loss; drop it or use mode.loss=sigmoid")
    if mode.init_from is None:
        problems.append("mode=dpo needs mode.init_from=<an SFT run directory or checkpoint>: DPO starts from that "
                        "model and keeps it, frozen, as the reference (e.g. mode.init_from=outputs/sft)")
    return problems


def optim_problems(optim: OptimConfig, dist: DistributedConfig) -> list[str]:
    """What is wrong with the optimizer's settings, alone or with the distributed strategy."""
    if optim.name not in OPTIMIZERS:
        return [f"optim={optim.name!r} (optim.name): must be one of {', '.join(OPTIMIZERS)}"]
    if optim.name != "muon":
        return []
    problems: list[str] = []
    _require_positive(problems, {"optim.muon_lr": optim.muon_lr})
    if not 0.0 <= optim.muon_momentum < 1.0:
        problems.append(f"optim.muon_momentum={optim.muon_momentum}: must be in [0, 1)")
    if optim.muon_weight_decay < 0:
        problems.append(f"optim.muon_weight_decay={optim.muon_weight_decay}: must be >= 0")
    if not 1 <= optim.muon_ns_steps < 100:
        problems.append(f"optim.muon_ns_steps={optim.muon_ns_steps}: must be in [1, 99] (5 is the usual)")
    if optim.muon_adjust_lr not in MUON_LR_ADJUSTMENTS:
        problems.append(f"optim.muon_adjust_lr={optim.muon_adjust_lr!r}: must be one of "
                        f"{', '.join(MUON_LR_ADJUSTMENTS)}")
    if dist.strategy == "fsdp":
        problems.append("optim=muon with distributed.strategy=fsdp: Muon orthogonalises each whole weight matrix "
                        "(Newton-Schulz), and FSDP2 leaves every rank a shard of it; use distributed.strategy=ddp "
                        "with optim=muon, or optim=adamw with fsdp")
    return problems


def _divisors_near(n: int, target: int) -> str:
    divisors = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))
    return ", ".join(str(d) for d in sorted(divisors[:3]))


def nearest_keys(name: str, declared: Iterable[str], prefix: str = "") -> str:
    """`did you mean <prefix><key>?` for the declared keys nearest a misspelt one, else all of them."""
    import difflib

    declared = sorted(declared)
    near = difflib.get_close_matches(name, declared, n=3, cutoff=0.5)
    if near:
        return f"did you mean {' or '.join(prefix + n for n in near)}?"
    return f"valid keys: {', '.join(prefix + n for n in declared)}"


def undeclared_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys of a composed DictConfig that no dataclass declares (`+train.lrr=1e-3`, a typo in a YAML
    preset), each with the nearest valid names: OmegaConf would keep them and nothing would read them."""
    from omegaconf import DictConfig, OmegaConf

    problems: list[str] = []
    schema = OmegaConf.get_type(node)
    declared = ({f.name for f in dataclasses.fields(schema)}
                if isinstance(schema, type) and dataclasses.is_dataclass(schema) else None)
    for key in node.keys():
        name = f"{prefix}{key}"
        if declared is not None and key not in declared:
            problems.append(f"{name}: no such setting ({schema.__name__} has no key '{key}'); "
                            f"{nearest_keys(str(key), declared, prefix)}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            problems += undeclared_keys(child, f"{name}.")
    return problems


def device_problems(hardware: HardwareConfig) -> list[str]:
    """A CUDA preset on a machine without a GPU (torch is imported only for a CUDA device)."""
    if not hardware.device.startswith("cuda"):
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return [f"hardware={hardware.name} (hardware.device={hardware.device}) needs a CUDA GPU, but "
            f"torch.cuda.is_available() is False on this machine: use hardware=cpu, or hardware.device=auto "
            f"to fall back to the CPU"]


def config_problems(cfg: Config) -> list[str]:
    """Every bad value of `cfg` that the values alone show; the files they name are checked by
    zer02llm.training.preflight.validate_run, which reports both together."""
    problems = model_problems(cfg.model)
    train, data = cfg.train, cfg.data
    _require_positive(
        problems,
        {
            "train.batch_size": train.batch_size,
            "train.grad_accum": train.grad_accum,
            "train.lr": train.lr,
            "train.log_interval": train.log_interval,
            "train.eval_interval": train.eval_interval,
            "train.save_interval": train.save_interval,
            "train.keep_checkpoints": train.keep_checkpoints,
            "data.seq_len": data.seq_len,
        },
    )
    if train.max_steps == 0 or train.max_steps < -1:
        problems.append(f"train.max_steps={train.max_steps}: must be > 0, or -1 to train for train.epochs")
    if train.max_steps == -1 and train.epochs <= 0 and train.token_budget is None and train.flops_budget is None:
        problems.append(f"train.epochs={train.epochs}: must be > 0 when train.max_steps=-1")
    for key, budget in {"train.token_budget": train.token_budget, "train.flops_budget": train.flops_budget}.items():
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            problems.append(f"{key}={budget}: must be > 0 (e.g. 2e6), or null for no budget")
    if train.token_budget is not None and train.flops_budget is not None:
        problems.append(f"train.token_budget={train.token_budget} and train.flops_budget={train.flops_budget}: "
                        f"each sets the number of steps, give one (the other =null)")
    if not 0.0 <= train.min_lr_ratio <= 1.0:
        problems.append(f"train.min_lr_ratio={train.min_lr_ratio}: must be in [0, 1]")
    for key, value in {"train.warmup_steps": train.warmup_steps, "train.weight_decay": train.weight_decay,
                       "train.grad_clip": train.grad_clip}.items():
        if value < 0:
            problems.append(f"{key}={value}: must be >= 0")
    for key, value in {"train.beta1": train.beta1, "train.beta2": train.beta2}.items():
        if not 0.0 <= value < 1.0:
            problems.append(f"{key}={value}: must be in [0, 1)")
    if train.eval_batches == 0 or train.eval_batches < -1:
        problems.append(f"train.eval_batches={train.eval_batches}: must be > 0, or -1 for the whole set")
    if data.seq_len > cfg.model.max_seq_len > 0:
        problems.append(
            f"data.seq_len={data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: "
            f"lower data.seq_len or raise model.max_seq_len"
        )
    if cfg.hardware.dtype not in DTYPES:
        problems.append(f"hardware.dtype={cfg.hardware.dtype!r}: must be one of {', '.join(DTYPES)}")
    if not (cfg.hardware.device in ("auto", "cpu", "cuda", "mps") or cfg.hardware.device.startswith("cuda:")):
        problems.append(f"hardware.device={cfg.hardware.device!r}: must be auto, cpu, cuda, cuda:N or mps")
    if cfg.hardware.threads is not None and cfg.hardware.threads < 0:
        problems.append(f"hardware.threads={cfg.hardware.threads}: must be >= 1, or 0/null for torch's default")
    if cfg.hardware.device == "cpu" and cfg.hardware.dtype == "float16":
        problems.append("hardware.dtype=float16 on hardware.device=cpu: use float32 or bfloat16 on CPU")
    problems += device_problems(cfg.hardware)
    if data.packing not in PACKINGS:
        problems.append(f"data.packing={data.packing!r}: must be one of {', '.join(PACKINGS)}")
    if cfg.mode.name in ("sft", "dpo"):
        for key, value, default in (("data.packing", data.packing, "concat"),
                                    ("data.document_mask", data.document_mask, False)):
            if value != default:
                problems.append(f"{key}={value} is for pretraining: an {cfg.mode.name.upper()} window holds one "
                                f"conversation, padded (drop the override with mode={cfg.mode.name})")
    if cfg.mode.name == "dpo":
        problems += dpo_problems(cfg.mode)
    if cfg.mode.name not in MODES:
        problems.append(f"mode.name={cfg.mode.name!r}: must be one of {', '.join(MODES)}")
    lora = cfg.lora
    if lora.rank < 0:
        problems.append(f"lora.rank={lora.rank}: must be >= 0 (0 turns LoRA off)")
    if lora.rank > 0:
        if lora.alpha <= 0:
            problems.append(f"lora.alpha={lora.alpha}: must be > 0")
        if not 0.0 <= lora.dropout < 1.0:
            problems.append(f"lora.dropout={lora.dropout}: must be in [0, 1)")
        if not lora.targets:
            problems.append("lora.targets=[]: name at least one layer, e.g. [q_proj,v_proj]")
    if cfg.distributed.strategy not in ("ddp", "fsdp"):
        problems.append(f"distributed.strategy={cfg.distributed.strategy!r}: must be ddp or fsdp")
    problems += optim_problems(cfg.optim, cfg.distributed)
    if cfg.logger not in LOGGERS:
        problems.append(f"logger={cfg.logger!r}: must be one of {', '.join(LOGGERS)}")
    return problems


def validate(cfg: Config, problems: Sequence[str] = ()) -> None:
    """Raise ConfigError listing every bad value (and `problems` found before, e.g. by undeclared_keys()
    on the composed config) before anything heavy happens."""
    problems = list(problems) + config_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def preset_groups() -> str:
    """`group: option, ...` lines for the YAML presets under conf/ (Hydra's own list would also
    show the schemas that the presets build on, which cannot be chosen)."""
    from zer02llm.resources import shipped_path

    conf = shipped_path("conf")
    lines = [f"{group.name}: {', '.join(sorted(p.stem for p in group.glob('*.yaml')))}"
             for group in sorted(conf.iterdir()) if group.is_dir() and group.name != "hydra"]
    return "\n".join(lines)


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore; the YAML in conf/ builds on them."""
    from hydra.core.config_store import ConfigStore

    from omegaconf import OmegaConf

    # `${zer02llm_groups:}` in the help templates (conf/*.yaml): the presets a user can pick
    OmegaConf.register_new_resolver("zer02llm_groups", preset_groups, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # generate and eval have no presets: their primary configs live here, not in conf/, so that
    # their --help and tab completion offer none of the training groups
    for name, schema, summary in (
        ("generate", GenerateConfig, 'python -m zer02llm.generate checkpoint=<dir> prompt="...": continue a prompt.\n'
                                     "Example: checkpoint=outputs/<date>/<time> prompt='ROMEO:' temperature=0"),
        ("eval", EvalConfig, "python -m zer02llm.eval checkpoint=<dir> [prompts=[...]]: chat with a model, or answer "
                             "a list of prompts.\nExample: checkpoint=outputs/<date>/<time> prompts_file=questions.txt "
                             "output=answers.jsonl"),
        ("export", ExportConfig, "python -m zer02llm.export checkpoint=<dir> output=<dir>: write a checkpoint as a "
                                 "transformers model directory.\nExample: checkpoint=outputs/<date>/<time> "
                                 "output=exported/ [overwrite=true]"),
        ("serve", ServeConfig, "python -m zer02llm.serve checkpoint=<dir> [host=127.0.0.1 port=8000]: serve the "
                               "OpenAI HTTP API (/v1/models, /v1/chat/completions, /v1/completions).\nExample: "
                               "checkpoint=outputs/<date>/<time> port=8000 engine.max_batch=32"),
    ):
        cs.store(name=f"base_{name}", node=schema)
        cs.store(name=name, node={
            "defaults": [f"base_{name}", "_self_", {"override hydra/job_logging": "disabled"},
                         {"override hydra/hydra_logging": "disabled"}],
            # nothing to keep: no run directory, no .hydra/ in the working directory
            "hydra": {"output_subdir": None, "run": {"dir": "."},
                      "help": {"template": f"{summary}\n\n== Config ==\nOverride any key (key=value); meanings: "
                                           f"{schema.__name__} in zer02llm/config.py\n\n$CONFIG\n"}},
        })
    # the group files' schemas (`defaults: [/model_dense_schema@_here_, _self_]`), stored outside any
    # group so that --help and tab completion offer only the YAML presets
    cs.store(name="model_dense_schema", node=ModelConfig)
    cs.store(name="model_moe_schema", node=MoEConfig)
    cs.store(name="mode_pretrain_schema", node=ModeConfig)
    cs.store(name="optim_schema", node=OptimConfig)
