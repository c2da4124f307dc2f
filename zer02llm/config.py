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


MODES = ("pretrain", "sft", "dpo", "grpo")
# the modes whose models answer in chat: prompted through the chat template (eval, evaluate, report samples)
CHAT_MODES = ("sft", "dpo", "grpo")
DPO_LOSSES = ("sigmoid", "ipo")  # built by zer02llm/training/dpo.py
# what GRPO's summed token losses are divided by (zer02llm/training/grpo_loss.py): "token", the step's
# completion tokens (DAPO); "sequence", each completion's own length, then the completions (the GRPO paper);
# "constant", completions x mode.max_new_tokens (Dr. GRPO)
GRPO_LOSS_NORMS = ("token", "sequence", "constant")
NUMERIC_RULES = ("auto", "gsm8k", "last")  # zer02llm/training/rewards.py
PACKINGS = ("concat", "bos_aligned")  # built by zer02llm/data/packing.py


@dataclass
class ModeConfig:
    """Training stage: "pretrain" (packed {"text"} documents), "sft" (chat, assistant tokens only),
    "dpo" (preference pairs against the frozen mode.init_from model; the beta/label_smoothing/loss keys) or
    "grpo" (rollouts scored by the `reward` group; beta and the keys from group_size on)."""

    name: str = "pretrain"
    # start from these weights (a checkpoint or run directory): fresh optimizer, step 0
    init_from: Optional[str] = None
    # DPO only: how far the policy may move from the reference (rewards are beta * log-prob ratios)
    beta: float = 0.1
    # DPO only: the assumed share of flipped preference labels (conservative DPO); 0: plain DPO
    label_smoothing: float = 0.0
    # DPO only: "sigmoid" (DPO's -log sigmoid(beta * h)) or "ipo" ((h - 1 / (2 * beta))^2)
    loss: str = "sigmoid"
    # GRPO only (beta above is its KL weight to the starting weights, k3 estimator; 0: no KL, no reference
    # model held). Completions sampled per prompt; advantages are normalised within each prompt's group
    group_size: int = 8
    max_new_tokens: int = 32  # per completion; one that reaches it unfinished is scored as it stands
    temperature: float = 1.0  # of the rollouts (validation's pass@1 is greedy)
    clip_eps: float = 0.2  # PPO's clip: the ratio pi/pi_old is kept within [1 - clip_eps, 1 + clip_eps_high]
    clip_eps_high: Optional[float] = None  # null: clip_eps; larger lets rare tokens gain faster (DAPO's 0.28)
    # true: advantage (r - mean) / (std + 1e-4) within the group (GRPO); false: r - mean (Dr. GRPO)
    scale_rewards: bool = True
    updates_per_rollout: int = 1  # optimizer steps on one batch of rollouts (> 1: the clipped ratio matters)
    loss_norm: str = "token"  # token | sequence | constant (GRPO_LOSS_NORMS)
    eval_samples: int = 4  # k of validation's pass@k (k sampled completions per prompt); 0: greedy only


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
    # Fewer threads than cores keeps a CPU run fast when other processes share the cores (docs/benchmarks.md)
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
    # window at a document's bos (longer documents cut, shorter ones packed best-fit; see docs/data.md)
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
    # peak lr of optim=adamw, every trained parameter (SFT, DPO; pretraining with optim=adamw). optim=muon does
    # not read it: each of its groups has its own (OptimConfig), and the warmup and decay below scale them all
    lr: float = 5e-4
    # cosine decay ends at the peak lr * min_lr_ratio
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
    # tasks scored at every evaluation (as `python -m zer02llm.evaluate tasks=[...]` takes them, e.g. [sample]):
    # task/<name>/acc and task/core in the metrics rows, summary.json and wandb
    eval_tasks: list[str] = field(default_factory=list)
    # the first N items of each of eval_tasks at each evaluation; null: all of them
    eval_tasks_limit: Optional[int] = None
    # the run's figure that an Optuna search optimises (the training job's return value), a sweep's summary
    # ranks jobs by and its scaling fit fits: a summary.json figure (final_val_loss, final_val_bpb, final_loss)
    # or a task score of the last evaluation, task/core or task/<task>/<acc|acc_norm|answered> (train.eval_tasks)
    sweep_metric: str = "final_val_loss"
    # minimize or maximize train.sweep_metric; null: maximize a task score (task/...), minimize the others
    sweep_direction: Optional[str] = None
    # a fresh start into a run directory that holds another run's checkpoints or metrics is refused;
    # true moves that run aside to a sibling <dir>.replaced-<date>-<time> first (nothing is deleted)
    overwrite: bool = False


# what train.sweep_metric may name: summary.json's final figures, and the task scores of train.eval_tasks
SUMMARY_METRICS = ("final_val_loss", "final_val_bpb", "final_loss")
TASK_METRICS = ("acc", "acc_norm", "answered")
DIRECTIONS = ("minimize", "maximize")


def metric_direction(metric: str, direction: Optional[str] = None) -> str:
    """train.sweep_direction, or by default: maximize a task score (task/...), minimize a loss."""
    if direction is not None:
        return str(direction)
    return "maximize" if str(metric).startswith("task/") else "minimize"


def sweep_metric_problems(train: "TrainConfig") -> list[str]:
    """What is wrong with train.sweep_metric and train.sweep_direction as such (the task names in a task
    score are checked against the loaded tasks by the entry point)."""
    problems = []
    metric = train.sweep_metric
    if train.sweep_direction is not None and train.sweep_direction not in DIRECTIONS:
        problems.append(f"train.sweep_direction={train.sweep_direction}: must be one of "
                        f"{', '.join(DIRECTIONS)}, or null (maximize task scores, minimize losses)")
    if isinstance(metric, str) and metric.startswith("task/"):
        parts = metric.split("/")
        if metric != "task/core" and not (len(parts) == 3 and parts[1] and parts[2] in TASK_METRICS):
            problems.append(f"train.sweep_metric={metric}: a task score is task/core or task/<task>/<metric>, "
                            f"the metric one of {', '.join(TASK_METRICS)} (e.g. task/sample_days/acc)")
        elif not train.eval_tasks:
            problems.append(f"train.sweep_metric={metric}: a task score needs the tasks scored during training: "
                            f"train.eval_tasks=[...] (e.g. [sample])")
    elif metric not in SUMMARY_METRICS:
        problems.append(f"train.sweep_metric={metric}: must be one of {', '.join(SUMMARY_METRICS)}, task/core "
                        f"or task/<task>/<{'|'.join(TASK_METRICS)}> (with train.eval_tasks)")
    return problems


OPTIMIZERS = ("adamw", "muon")
MUON_LR_ADJUSTMENTS = ("original", "match_rms_adamw")


@dataclass
class OptimConfig:
    """The optimizer. "adamw": AdamW on every trained parameter at train.lr (train.weight_decay, beta1, beta2).
    "muon": each parameter group at its own peak lr, all following train's warmup and cosine: Muon on the
    hidden matrices (matrix_lr); AdamW (train.weight_decay, beta1, beta2) on the token embedding
    (embedding_lr; tied, it is also the LM head), an untied LM head with the other AdamW matrices, MoE routers
    and LoRA adapters (head_lr), and the norms' gains (scalar_lr). conf/mode/*.yaml choose one per mode
    (pretrain: muon; sft, dpo: adamw). The keys below are read with name=muon only; docs/optimizers.md."""

    name: str = "adamw"
    # peak lr of the hidden matrices (Muon), before Muon's own shape scaling (muon_adjust_lr)
    matrix_lr: float = 0.005
    # peak lrs of the AdamW groups at model.dim = lr_reference_dim; at another width each is scaled by
    # sqrt(lr_reference_dim / model.dim) (nanochat's rule), so one set of values serves every preset
    embedding_lr: float = 0.016
    head_lr: float = 0.016
    scalar_lr: float = 0.008
    # null: no width scaling (the AdamW groups' lrs as given)
    lr_reference_dim: Optional[int] = 512
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    # decoupled: each step multiplies the matrices by 1 - lr * muon_weight_decay (0: none, as Keller Jordan's Muon)
    muon_weight_decay: float = 0.0
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    # "original": lr * sqrt(max(1, out/in)) (Keller Jordan's, for lr ~0.02); "match_rms_adamw":
    # lr * 0.2 * sqrt(max(out, in)), the update's RMS of AdamW's (Moonshot's, for an AdamW-sized lr)
    muon_adjust_lr: str = "original"
    # renamed optim.matrix_lr: declared only so that an old command line gets the new name, not a traceback
    muon_lr: Optional[float] = None

    def group_lrs(self, dim: int) -> dict[str, float]:
        """Each group's peak lr for a model of width `dim` (the AdamW groups scaled by width)."""
        scale = math.sqrt(self.lr_reference_dim / dim) if self.lr_reference_dim else 1.0
        return {"matrix": self.matrix_lr, "embedding": self.embedding_lr * scale, "head": self.head_lr * scale,
                "scalar": self.scalar_lr * scale}


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
class FunctionReward:
    """A reward of one's own: `_target_` names a function `package.module.name(completion, answer, prompt)
    -> float` (import path; the module must be importable, e.g. from the working directory)."""

    _target_: Optional[str] = None
    weight: float = 1.0


@dataclass
class RewardConfig:
    """What a GRPO completion scores: the weighted sum of the terms below with a non-zero weight
    (zer02llm/training/rewards.py). Answer terms give 1 or 0; `accuracy` is the share of completions
    whose answer terms all give 1."""

    name: str = "numeric"
    # answer terms: the completion's number equals the answer's ("gsm8k": the number after ####;
    # "last": the last number; "auto": #### when there is one, else the last number)
    numeric: float = 1.0
    numeric_rule: str = "auto"
    exact: float = 0.0  # the completion, stripped, equals the answer
    regex: float = 0.0  # reward.pattern is found in the completion ({answer}: the answer, escaped)
    pattern: Optional[str] = None
    # shape terms: closeness gives max(0, 1 - |error| / closeness_scale) of the number numeric_rule reads
    # (partial credit for a near answer); format gives 1 when reward.format_pattern is found; length gives
    # -min(1, (characters - length_target) / length_target) past length_target characters, else 0
    closeness: float = 0.0
    closeness_scale: float = 10.0
    format: float = 0.0
    format_pattern: Optional[str] = None
    length: float = 0.0
    length_target: int = 0
    function: FunctionReward = field(default_factory=FunctionReward)


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
    reward: RewardConfig = field(default_factory=RewardConfig)  # mode=grpo's rewards (conf/reward/)
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
    # 1: off (the default, as in OpenAI's API and transformers: temperature=0 is then greedy); > 1 discourages
    # every token already in the prompt or the output, so an answer that must repeat the question's words suffers
    repetition_penalty: float = 1.0
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
    # null: chat when the checkpoint was trained with mode=sft, dpo or grpo (CHAT_MODES)
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
class EvaluateConfig:
    """`python -m zer02llm.evaluate`: score a model on tasks (docs/evaluation.md), or compare runs' reports."""

    # a checkpoint directory (…/checkpoints/last) or a run directory (its newest checkpoint)
    checkpoint: Optional[str] = None
    # task files (.jsonl, .parquet), task or suite specs (.yaml, .json), or shipped suites (sample)
    tasks: list[str] = field(default_factory=lambda: ["sample"])
    # few-shot examples per item for every task; null: each task's own num_fewshot
    num_fewshot: Optional[int] = None
    # the first `limit` items of each task; null: all of them
    limit: Optional[int] = None
    # which few-shot examples each item gets
    seed: int = 1234
    # generative tasks of format auto: true asks through the chat template; null: chat for SFT, DPO and GRPO checkpoints
    chat: Optional[bool] = None
    # a LoRA adapter directory merged into the checkpoint's weights
    adapter: Optional[str] = None
    device: str = "auto"
    # torch's CPU threads (null/0: one per core); 1 suits a machine whose cores other processes share
    threads: Optional[int] = 1
    # null: the tokenizer the checkpoint was trained with
    tokenizer_path: Optional[str] = None
    # the results JSON; null: eval_results.json in the run directory (in the checkpoint outside a run)
    output: Optional[str] = None
    # run directories whose report cards to set side by side (no model is loaded); the table goes to stdout
    compare: list[str] = field(default_factory=list)


def evaluate_problems(cfg: EvaluateConfig) -> list[str]:
    """What is wrong with an evaluate command's settings (empty when they are valid)."""
    if cfg.compare:  # reads run directories only: the other keys are not used
        return []
    problems = []
    if not cfg.checkpoint:
        problems.append("checkpoint=<dir> is required: a checkpoint (…/checkpoints/last) or a run directory")
    if not cfg.tasks:
        problems.append("tasks=[]: name at least one task, e.g. tasks=[sample] or tasks=[my_task.jsonl]")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        problems.append(f"num_fewshot={cfg.num_fewshot}: must be >= 0, or null for each task's own")
    if cfg.limit is not None and cfg.limit <= 0:
        problems.append(f"limit={cfg.limit}: must be > 0, or null for every item")
    if cfg.threads is not None and cfg.threads < 0:
        problems.append(f"threads={cfg.threads}: must be >= 1, or 0/null for torch's default (one per core)")
    return problems


@dataclass
class ExportConfig:
    """`python -m zer02llm.export`: a checkpoint as a transformers model directory, or as a GGUF file for
    llama.cpp and ollama (docs/interop.md)."""

    # a checkpoint directory (…/checkpoints/last) or a run directory (its newest checkpoint)
    checkpoint: Optional[str] = None
    # the new directory (transformers: the model directory; gguf: model.gguf and an ollama Modelfile);
    # one that exists and holds files is refused unless overwrite=true
    output: Optional[str] = None
    # "transformers" (safetensors + config.json) or "gguf" (llama.cpp's format)
    format: str = "transformers"
    overwrite: bool = False
    # a LoRA adapter directory merged into the checkpoint's weights (a LoRA run's own adapters are merged anyway)
    adapter: Optional[str] = None
    # null: the tokenizer the checkpoint was trained with
    tokenizer_path: Optional[str] = None
    # format=transformers: the exported weights' dtype; "auto": as the checkpoint stores them
    dtype: str = "auto"
    # format=gguf: the weights' type, f32, f16, bf16 or q8_0 (norms and routers stay f32); null: f16
    outtype: Optional[str] = None
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
    """`python -m zer02llm.serve`: the OpenAI HTTP API over a checkpoint (docs/serving.md).

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
    # the largest request body taken, in bytes (1 MiB); a bigger one is a 413, refused from its Content-Length
    max_body_bytes: int = 1 << 20
    # seconds a client has to send a request's headers, and then its body; a stalled connection is closed (408)
    request_timeout_s: float = 30.0
    # seconds an idle keep-alive connection stays open after a response (uvicorn's timeout_keep_alive)
    timeout_keep_alive_s: float = 5.0
    # open connections at most; beyond them a new request gets 503 (uvicorn's limit_concurrency)
    limit_concurrency: int = 512


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


def grpo_problems(cfg: Config) -> list[str]:
    mode, problems = cfg.mode, []
    if mode.group_size < 2:
        problems.append(f"mode.group_size={mode.group_size}: must be >= 2 (advantages compare the completions of "
                        f"one prompt; 8 is usual)")
    if mode.max_new_tokens < 1:
        problems.append(f"mode.max_new_tokens={mode.max_new_tokens}: must be >= 1")
    elif mode.max_new_tokens >= cfg.data.seq_len:
        problems.append(f"mode.max_new_tokens={mode.max_new_tokens} leaves no room for the prompt in data.seq_len="
                        f"{cfg.data.seq_len} (prompt + completion): raise data.seq_len or lower mode.max_new_tokens")
    if not (math.isfinite(mode.temperature) and mode.temperature > 0):
        problems.append(f"mode.temperature={mode.temperature}: must be > 0 (rollouts are sampled; at 0 a group's "
                        f"completions are equal and teach nothing)")
    if not 0.0 < mode.clip_eps < 1.0:
        problems.append(f"mode.clip_eps={mode.clip_eps}: must be in (0, 1) (0.2 is usual)")
    if mode.clip_eps_high is not None and not mode.clip_eps_high >= mode.clip_eps:
        problems.append(f"mode.clip_eps_high={mode.clip_eps_high}: must be >= mode.clip_eps={mode.clip_eps}, or "
                        f"null for the same")
    if not (math.isfinite(mode.beta) and mode.beta >= 0):
        problems.append(f"mode.beta={mode.beta}: must be >= 0 (the KL weight; 0 turns the KL term off)")
    if mode.updates_per_rollout < 1:
        problems.append(f"mode.updates_per_rollout={mode.updates_per_rollout}: must be >= 1")
    if mode.loss_norm not in GRPO_LOSS_NORMS:
        problems.append(f"mode.loss_norm={mode.loss_norm!r}: must be one of {', '.join(GRPO_LOSS_NORMS)}")
    if mode.eval_samples < 0:
        problems.append(f"mode.eval_samples={mode.eval_samples}: must be >= 0 (0: greedy validation only)")
    if cfg.distributed.strategy == "fsdp":
        problems.append("distributed.strategy=fsdp with mode=grpo: each rank rolls out on its own, which sharded "
                        "weights cannot do; use distributed.strategy=ddp")
    return problems + reward_problems(cfg.reward)


def reward_problems(reward: RewardConfig) -> list[str]:
    import re

    problems = []
    weights = {"reward.numeric": reward.numeric, "reward.exact": reward.exact, "reward.regex": reward.regex,
               "reward.closeness": reward.closeness, "reward.format": reward.format, "reward.length": reward.length,
               "reward.function.weight": reward.function.weight}
    for key, weight in weights.items():
        if not math.isfinite(weight):
            problems.append(f"{key}={weight}: must be a finite weight (0 turns the term off)")
    if reward.function._target_ is None:
        weights.pop("reward.function.weight")
        if reward.name == "function":
            return problems + ["reward=function needs reward.function._target_=<package.module.function>, a "
                               "function (completion, answer, prompt) -> float"]
    if not any(weights.values()):
        problems.append("every reward weight is 0: give at least one term a weight, e.g. reward.numeric=1 "
                        "(or pick a preset: reward=numeric)")
    if reward.numeric_rule not in NUMERIC_RULES:
        problems.append(f"reward.numeric_rule={reward.numeric_rule!r}: must be one of {', '.join(NUMERIC_RULES)}")
    for weight, key, pattern in ((reward.regex, "reward.pattern", reward.pattern),
                                 (reward.format, "reward.format_pattern", reward.format_pattern)):
        if not weight:
            continue
        if not pattern:
            problems.append(f"{key} is empty but its term has weight {weight}: give a regular expression "
                            f"(or the weight 0)")
            continue
        try:
            re.compile(pattern.replace("{answer}", "0"))
        except re.error as e:
            problems.append(f"{key}={pattern!r} is not a regular expression ({e})")
    if reward.closeness and not reward.closeness_scale > 0:
        problems.append(f"reward.closeness_scale={reward.closeness_scale}: must be > 0 (the error at which the credit "
                        f"reaches 0) when reward.closeness={reward.closeness}")
    if reward.length and reward.length_target <= 0:
        problems.append(f"reward.length_target={reward.length_target}: must be > 0 (characters) when "
                        f"reward.length={reward.length}")
    target = reward.function._target_
    if target is not None and (not isinstance(target, str) or "." not in target.strip(".")):
        problems.append(f"reward.function._target_={target!r}: must be a dotted import path, "
                        f"e.g. my_rewards.score (a function (completion, answer, prompt) -> float)")
    return problems


def optim_problems(optim: OptimConfig) -> list[str]:
    """What is wrong with the optimizer's settings."""
    if optim.name not in OPTIMIZERS:
        return [f"optim={optim.name!r} (optim.name): must be one of {', '.join(OPTIMIZERS)}"]
    if optim.name != "muon":
        return []
    problems: list[str] = []
    if optim.muon_lr is not None:
        problems.append(f"optim.muon_lr={optim.muon_lr}: renamed optim.matrix_lr (the hidden matrices' lr); the "
                        f"other groups have optim.embedding_lr, optim.head_lr and optim.scalar_lr (docs/optimizers.md)")
    _require_positive(problems, {f"optim.{group}_lr": getattr(optim, f"{group}_lr")
                                 for group in ("matrix", "embedding", "head", "scalar")})
    if optim.lr_reference_dim is not None and optim.lr_reference_dim <= 0:
        problems.append(f"optim.lr_reference_dim={optim.lr_reference_dim}: must be > 0 (the model.dim the AdamW "
                        f"groups' lrs are given for), or null for no width scaling")
    if not 0.0 <= optim.muon_momentum < 1.0:
        problems.append(f"optim.muon_momentum={optim.muon_momentum}: must be in [0, 1)")
    if optim.muon_weight_decay < 0:
        problems.append(f"optim.muon_weight_decay={optim.muon_weight_decay}: must be >= 0")
    if not 1 <= optim.muon_ns_steps < 100:
        problems.append(f"optim.muon_ns_steps={optim.muon_ns_steps}: must be in [1, 99] (5 is the usual)")
    if optim.muon_adjust_lr not in MUON_LR_ADJUSTMENTS:
        problems.append(f"optim.muon_adjust_lr={optim.muon_adjust_lr!r}: must be one of "
                        f"{', '.join(MUON_LR_ADJUSTMENTS)}")
    return problems


def override_problems(optim: OptimConfig, override_keys: Iterable[str]) -> list[str]:
    """Command-line keys that the chosen optimizer would not read. train.lr is AdamW's lr: under optim=muon
    (the pretraining default) every group has its own, so a train.lr given there would change nothing."""
    if optim.name == "muon" and "train.lr" in override_keys:
        return ["train.lr is the lr of optim=adamw; with optim=muon (mode=pretrain's default) each parameter "
                "group has its own peak lr: optim.matrix_lr (hidden matrices, Muon), optim.embedding_lr, "
                "optim.head_lr, optim.scalar_lr (AdamW). Set those, or add optim=adamw to train with train.lr"]
    return []


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
            # worded as cli.unknown_override_keys words `train.lrr=` (without the +), which Hydra never composes
            problems.append(f"{name}: no such setting; {nearest_keys(str(key), declared, prefix)}")
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
    if train.eval_tasks_limit is not None and train.eval_tasks_limit <= 0:
        problems.append(f"train.eval_tasks_limit={train.eval_tasks_limit}: must be > 0, or null for every item")
    problems += sweep_metric_problems(train)
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
    if cfg.mode.name in CHAT_MODES:
        for key, value, default in (("data.packing", data.packing, "concat"),
                                    ("data.document_mask", data.document_mask, False)):
            if value != default:
                problems.append(f"{key}={value} is for pretraining: an {cfg.mode.name.upper()} window holds one "
                                f"conversation (or prompt), padded (drop the override with mode={cfg.mode.name})")
    if cfg.mode.name == "dpo":
        problems += dpo_problems(cfg.mode)
    if cfg.mode.name == "grpo":
        problems += grpo_problems(cfg)
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
    problems += optim_problems(cfg.optim)
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
    # `${zer02llm_metric_direction:...}` in conf/hydra/sweeper/optuna_tpe.yaml: the search's direction follows
    # train.sweep_metric
    OmegaConf.register_new_resolver("zer02llm_metric_direction", metric_direction, replace=True)
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
        ("export", ExportConfig, "python -m zer02llm.export checkpoint=<dir> output=<dir> [format=gguf]: write a "
                                 "checkpoint as a transformers model directory, or as a GGUF file for llama.cpp and "
                                 "ollama.\nExample: checkpoint=outputs/<date>/<time> output=exported/ "
                                 "[format=gguf outtype=q8_0] [overwrite=true]"),
        ("evaluate", EvaluateConfig, "python -m zer02llm.evaluate checkpoint=<dir> [tasks=[...]]: score a model on "
                                     "tasks (docs/evaluation.md).\nExample: checkpoint=outputs/<date>/<time> "
                                     "tasks=[sample]; compare=[<run>,<run>] sets runs' report cards side by side"),
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
    cs.store(name="reward_schema", node=RewardConfig)
