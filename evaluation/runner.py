"""Run a suite against any OpenAI-compatible server and collect per-example results.

Requests for all models go out concurrently (bounded by an ``asyncio.Semaphore``) so a
batching engine such as vLLM serves them together. The runner measures what only the
server can tell: answers, latency, completion tokens, reference NLL (vLLM-style
``prompt_logprobs`` on /v1/completions) and judge verdicts; scoring, confidence intervals
and reports are done afterwards from the collected record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluation.bootstrap import paired_bootstrap
from evaluation.dataset import Contamination, Example, HeldOut, held_out_examples
from evaluation.judge import candidate_score, judge_messages, parse_verdict
from evaluation.scoring import score_texts
from evaluation.suite import METRIC_DIRECTIONS, Suite
from training.manifest import MANIFEST_FILE, manifest_sha256
from tuneserve.errors import UserError

log = logging.getLogger(__name__)
DEFAULT_SERVER = "http://127.0.0.1:8000/v1"


@dataclass
class ModelSpec:
    """A model to evaluate: report label, id on the server, and its adapter manifest."""

    label: str
    model_id: str
    adapter_path: Path | None = None
    manifest: dict[str, Any] | None = None
    manifest_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model_id": self.model_id,
            "adapter_path": str(self.adapter_path) if self.adapter_path else None,
            "manifest_hash": self.manifest_hash,
            "base_model": (self.manifest or {}).get("base_model"),
        }


@dataclass
class RunOptions:
    server: str = DEFAULT_SERVER
    api_key: str = "EMPTY"
    dataset: Path | None = None
    adapter_dirs: dict[str, Path] = field(default_factory=dict)
    timeout_s: float = 300.0
    # What to do with rows an adapter trained on: refuse the run, score them, or drop them.
    contamination: Contamination = "refuse"


def parse_models(spec: str) -> list[tuple[str, str]]:
    """``"base,docker,old=docker-v1"`` -> [(label, model_id), ...]; the first is the baseline."""
    pairs = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        label, _, model_id = item.partition("=")
        pairs.append((label.strip(), (model_id or label).strip()))
    if len(pairs) < 2:
        raise UserError("--models needs a baseline and at least one model, e.g. base,my-adapter")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise UserError(f"--models repeats a label: {labels}")
    return pairs


def read_manifest(adapter_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The adapter's tuneserve.json and its sha256, or (None, None) when it has none."""
    path = adapter_dir / MANIFEST_FILE
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    return manifest, manifest_sha256(manifest)


async def resolve_models(client, pairs: list[tuple[str, str]], opts: RunOptions) -> list[ModelSpec]:
    """Turn (label, id) pairs into ModelSpecs: ``base`` means the server's base model (the
    one without a ``parent``); each id must be served; manifests are read from
    ``--adapter-dir`` or ``$TUNESERVE_HOME/adapters/<id>``."""
    from tuneserve.home import adapters_dir

    try:
        served = [m async for m in client.models.list()]
    except Exception as exc:  # connection refused, auth, DNS: one readable line
        raise UserError(f"cannot list models at {opts.server}: {_describe(exc)}") from None
    ids = [m.id for m in served]
    bases = [
        m.id
        for m in served
        if not (getattr(m, "parent", None) or (m.model_extra or {}).get("parent"))
    ]
    specs = []
    for label, model_id in pairs:
        if model_id == "base":
            if not bases:
                raise UserError(f"{opts.server} lists no base model (served: {ids})")
            model_id = bases[0]
        if model_id not in ids:
            raise UserError(f"model {model_id!r} is not served at {opts.server} (served: {ids})")
        adapter_dir = opts.adapter_dirs.get(label) or opts.adapter_dirs.get(model_id)
        registered = None if adapter_dir else await _registered_adapter(client, model_id)
        if registered and Path(registered["path"], MANIFEST_FILE).is_file():
            adapter_dir = Path(registered["path"])  # the server's folder, readable here
        if adapter_dir is None and (adapters_dir() / model_id / MANIFEST_FILE).is_file():
            adapter_dir = adapters_dir() / model_id
        manifest, digest = read_manifest(adapter_dir) if adapter_dir else (None, None)
        if manifest is None and registered and registered.get("manifest"):
            manifest = registered["manifest"]  # a remote server: its manifest, not its files
            digest = manifest_sha256(manifest)
        specs.append(ModelSpec(label, model_id, adapter_dir, manifest, digest))
    return specs


async def _registered_adapter(client, model_id: str) -> dict[str, Any] | None:
    """The server's adapter registry entry (``GET /v1/adapters/{id}``: path and manifest) for
    a served adapter, or None (the base, or a server without tuneserve's registry)."""
    import openai

    try:
        entry = await client.get(f"/adapters/{model_id}", cast_to=object)
    except (openai.APIStatusError, openai.APIConnectionError):
        return None
    return entry if isinstance(entry, dict) and entry.get("path") else None


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return message.splitlines()[0]


async def _generate(client, sem, suite: Suite, model: ModelSpec, ex: Example) -> dict[str, Any]:
    messages = ex.messages
    gen = suite.generation
    async with sem:
        start = time.perf_counter()
        try:
            resp = await client.chat.completions.create(
                model=model.model_id,
                messages=messages,
                max_tokens=gen.max_tokens,
                temperature=gen.temperature,
                top_p=gen.top_p,
                stop=gen.stop or None,
                seed=gen.seed,
            )
        except Exception as exc:
            raise UserError(f"{model.model_id}: chat completion failed: {_describe(exc)}") from None
        latency = time.perf_counter() - start
    text = resp.choices[0].message.content or ""
    tokens = resp.usage.completion_tokens if resp.usage else None
    return {
        "text": text.strip(),
        "finish_reason": resp.choices[0].finish_reason,  # "stop": it ended its answer itself
        "latency_s": latency,
        "output_tokens": tokens,
        "tokens_per_s": (tokens / latency) if tokens and latency > 0 else None,
    }


async def _reference_nll(client, sem, model: ModelSpec, ids: list[int], mask: list[int]) -> float:
    """Mean negative log-likelihood per token of the reference answer (plus end-of-turn)."""
    async with sem:
        resp = await client.completions.create(
            model=model.model_id,
            prompt=ids,
            max_tokens=1,
            temperature=0.0,
            extra_body={"prompt_logprobs": 0},
        )
    choice = resp.choices[0]
    entries = getattr(choice, "prompt_logprobs", None) or (choice.model_extra or {}).get(
        "prompt_logprobs"
    )
    if not entries or len(entries) != len(ids):
        raise ValueError("server returned no prompt_logprobs for the prompt tokens")
    total = 0.0
    count = 0
    for token_id, keep, entry in zip(ids, mask, entries, strict=True):
        if not keep:
            continue
        lp = entry[str(token_id)]["logprob"]
        total -= max(lp, -1e4)  # vLLM reports -inf as a large negative; keep NLL finite
        count += 1
    return total / count


async def _judge(client, sem, judge_model: str, ex: Example, a: str, b: str) -> dict[str, Any]:
    question = ex.messages[-1]["content"] if ex.messages else ""

    async def ask(first: str, second: str) -> tuple[str, str | None]:
        async with sem:
            resp = await client.chat.completions.create(
                model=judge_model,
                messages=judge_messages(question, ex.reference, first, second),
                max_tokens=8,
                temperature=0.0,
            )
        reply = resp.choices[0].message.content or ""
        return reply, parse_verdict(reply)

    # Candidate as B, then as A: position bias cancels in candidate_score.
    (reply1, v1), (reply2, v2) = await asyncio.gather(ask(a, b), ask(b, a))
    return {
        "verdicts": [v1, v2],
        "replies": [reply1, reply2],
        "score": candidate_score(v1, v2),
        "unparsed": int(v1 is None) + int(v2 is None),
    }


def _tokenizer_for(suite: Suite, models: list[ModelSpec], notes: list[str]):
    """The tokenizer whose chat template formats NLL prompts: the suite's ``tokenizer``,
    else an adapter manifest's ``base_model``, else the served base id when it names a
    prepared base model. None (with a note) when there is none."""
    from transformers import AutoTokenizer

    from training.base_models import resolve_model_path

    candidates = [suite.tokenizer] if suite.tokenizer else []
    for m in models:
        if m.manifest:  # the exact checkpoint the adapter was trained on, then its name
            candidates += [m.manifest.get("base_model_path"), m.manifest.get("base_model")]
    candidates.append(models[0].model_id)
    for name in (c for c in candidates if c):
        try:
            path = resolve_model_path(str(name))
        except UserError:
            continue
        return AutoTokenizer.from_pretrained(str(path))
    notes.append(
        "perplexity skipped: no local tokenizer (set `tokenizer:` in the suite to a prepared "
        "base model name or a model folder)"
    )
    return None


async def collect(suite: Suite, pairs: list[tuple[str, str]], opts: RunOptions) -> dict[str, Any]:
    """Ask the server everything the suite needs; returns the raw run record (no scores)."""
    from openai import AsyncOpenAI

    started = datetime.now(UTC)
    client = AsyncOpenAI(
        base_url=opts.server, api_key=opts.api_key, timeout=opts.timeout_s, max_retries=1
    )
    try:
        models = await resolve_models(client, pairs, opts)
        adapters = {m.label: (m.manifest, m.adapter_path) for m in models if m.manifest}
        held: HeldOut = held_out_examples(suite, adapters, opts.dataset, opts.contamination)
        notes = list(held.notes)
        sem = asyncio.Semaphore(suite.concurrency)
        log.info("%s: %d examples x %d models", suite.name, len(held.examples), len(models))
        wall = time.perf_counter()
        outputs = await asyncio.gather(
            *(_generate(client, sem, suite, m, ex) for m in models for ex in held.examples)
        )
        generation_wall_s = time.perf_counter() - wall
        n = len(held.examples)
        per_model = {m.label: outputs[i * n : (i + 1) * n] for i, m in enumerate(models)}

        if suite.perplexity:
            await _add_nll(client, sem, suite, models, held.examples, per_model, notes)

        judge_record = None
        if suite.judge is not None:
            judge_record = await _run_judge(suite, models, held.examples, per_model, opts, notes)
    finally:
        await client.close()

    examples = []
    for i, ex in enumerate(held.examples):
        examples.append(
            {
                "index": ex.index,
                "messages": ex.messages,
                "reference": ex.reference,
                "outputs": {m.label: per_model[m.label][i] for m in models},
            }
        )
    return {
        "suite": suite.name,
        "suite_config": suite.model_dump(mode="json"),
        "server": opts.server,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generation_wall_s": generation_wall_s,
        "dataset": {
            "path": str(held.path),
            "sha256": held.sha256,
            "held_out_rows": len(held.examples),
            "val_set_size": held.val_set_size,
            "seed": held.seed,
            "split_source": held.split_source,
        },
        "models": [m.to_dict() for m in models],
        "examples": examples,
        "judge": judge_record,
        "notes": notes,
    }


async def _add_nll(client, sem, suite, models, examples, per_model, notes) -> None:
    from training.chat_format import encode_for_training

    tokenizer = _tokenizer_for(suite, models, notes)
    if tokenizer is None:
        return
    encoded = [
        encode_for_training(
            tokenizer, [*ex.messages, {"role": "assistant", "content": ex.reference}]
        )
        for ex in examples
    ]
    for m in models:
        try:
            values = await asyncio.gather(
                *(
                    _reference_nll(client, sem, m, e["input_ids"], e["completion_mask"])
                    for e in encoded
                )
            )
        except Exception as exc:  # a server without prompt_logprobs: report, don't fail the run
            notes.append(f"perplexity skipped for {m.label}: {_describe(exc)}")
            continue
        for out, value in zip(per_model[m.label], values, strict=True):
            out["nll"] = value


async def _run_judge(suite, models, examples, per_model, opts, notes) -> dict[str, Any]:
    from openai import AsyncOpenAI

    spec = suite.judge
    client = AsyncOpenAI(
        base_url=spec.server or opts.server,
        api_key=spec.api_key or opts.api_key,
        timeout=opts.timeout_s,
        max_retries=1,
    )
    judge_model = models[0].model_id if spec.model == "base" else spec.model
    # A seeded sample keeps the judged subset stable from run to run.
    picked = sorted(
        random.Random(0).sample(range(len(examples)), min(spec.max_examples, len(examples)))
    )
    sem = asyncio.Semaphore(suite.concurrency)
    record: dict[str, Any] = {"model": judge_model, "indices": picked, "candidates": {}}
    baseline = models[0].label
    try:
        for m in models[1:]:
            try:
                results = await asyncio.gather(
                    *(
                        _judge(
                            client,
                            sem,
                            judge_model,
                            examples[i],
                            per_model[baseline][i]["text"],
                            per_model[m.label][i]["text"],
                        )
                        for i in picked
                    )
                )
            except Exception as exc:
                notes.append(f"judge skipped for {m.label}: {_describe(exc)}")
                continue
            record["candidates"][m.label] = results
    finally:
        await client.close()
    return record


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Score a collected record in place: per-example scores, per-model metrics, and
    baseline-vs-candidate deltas with 95% paired-bootstrap CIs. Returns the record."""
    suite_metrics = record["suite_config"]["metrics"]
    ignore_case = record["suite_config"].get("ignore_case", False)
    labels = [m["label"] for m in record["models"]]
    references = [ex["reference"] for ex in record["examples"]]
    per_example: dict[str, dict[str, list[float | None]]] = {}
    metrics: dict[str, dict[str, float | None]] = {}
    for label in labels:
        preds = [ex["outputs"][label]["text"] for ex in record["examples"]]
        agg, scores = score_texts(suite_metrics, preds, references, ignore_case=ignore_case)
        for name in ("output_tokens", "latency_s", "tokens_per_s", "nll"):
            values = [ex["outputs"][label].get(name) for ex in record["examples"]]
            if any(v is not None for v in values):
                scores[name] = values
                present = [v for v in values if v is not None]
                agg[name] = sum(present) / len(present)
        if "nll" in agg:
            agg["perplexity"] = math.exp(agg["nll"])
        per_example[label] = scores
        metrics[label] = agg
    for i, ex in enumerate(record["examples"]):
        ex["scores"] = {
            label: {name: vals[i] for name, vals in per_example[label].items()} for label in labels
        }

    comparisons: dict[str, dict[str, Any]] = {}
    baseline = labels[0]
    for label in labels[1:]:
        comp = {}
        for name, base_scores in per_example[baseline].items():
            if name not in per_example[label]:
                continue
            comp[name] = paired_bootstrap(base_scores, per_example[label][name]).to_dict()
        comparisons[label] = comp

    judge = record.get("judge")
    if judge:
        for label, results in judge["candidates"].items():
            scores = [r["score"] for r in results]
            metrics[label]["judge_win_rate"] = sum(scores) / len(scores)
            ci = paired_bootstrap([0.5] * len(scores), scores).to_dict()
            # Reported as a win rate: the CI of (win_rate - 0.5) shifted back by 0.5.
            comparisons[label]["judge_win_rate"] = ci
            judge.setdefault("summary", {})[label] = {
                "win_rate": metrics[label]["judge_win_rate"],
                "n": len(scores),
                "unparsed": sum(r["unparsed"] for r in results),
            }
    record["metrics"] = metrics
    record["comparisons"] = comparisons
    record["directions"] = {k: v for k, v in METRIC_DIRECTIONS.items()}
    return record


def run_suite(suite: Suite, models_spec: str, opts: RunOptions) -> dict[str, Any]:
    """Collect and score one suite run (blocking)."""
    record = asyncio.run(collect(suite, parse_models(models_spec), opts))
    return summarise(record)


def record_to_json(record: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(record, indent=2, default=str))
