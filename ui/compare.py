"""The Compare tab: one prompt to several models at once, streamed side by side.

Building each model's message list from its own history, running the streams
concurrently and merging them into snapshots the page renders, the stats line under each
answer, the equivalent ``curl`` / ``openai`` call, and the tab's handlers and layout.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ui.client import SamplingParams, ServerError, StreamEvent, TuneserveClient
from ui.common import connect, refusal, seed_value

MAX_SLOTS = 4  # the base and up to three adapters


@dataclass
class SlotState:
    """What one column shows: the model, its answer so far, stats or an error."""

    model: str | None
    text: str = ""
    running: bool = False
    error: str | None = None
    stats: StreamEvent | None = None

    def stats_line(self) -> str:
        """One Markdown line under the answer: TTFT, tokens/s, tokens, or the error."""
        if self.model is None:
            return ""
        if self.error:
            return f"⚠️ **{self.model}**: {self.error}"
        if self.running:
            return f"⏳ {self.model}: generating…"
        if self.stats is None:
            return ""
        return format_stats(self.stats)


def format_stats(event: StreamEvent) -> str:
    """``TTFT 0.42 s · 18.3 tokens/s · 64 tokens · 3.9 s`` (missing values left out)."""
    parts = []
    if event.ttft_s is not None:
        parts.append(f"TTFT {event.ttft_s:.2f} s")
    speed = event.tokens_per_s
    if speed is not None:
        parts.append(f"{speed:.1f} tokens/s")
    if event.completion_tokens is not None:
        parts.append(f"{event.completion_tokens} tokens")
    if event.total_s is not None:
        parts.append(f"{event.total_s:.1f} s")
    if event.finish_reason:
        parts.append(f"finish: {event.finish_reason}")
    return " · ".join(parts)


def message_text(content: Any) -> str:
    """The text of a chat message's content as Gradio hands it back (str or parts list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, Sequence):
        return "".join(message_text(part) for part in content)
    return ""


def build_messages(
    system_prompt: str | None, history: Sequence[dict[str, Any]] | None, prompt: str
) -> list[dict[str, str]]:
    """OpenAI ``messages``: optional system prompt, the earlier turns, the new user turn."""
    messages: list[dict[str, str]] = []
    if system_prompt and system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    for turn in history or []:
        role = turn.get("role")
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": message_text(turn.get("content"))})
    messages.append({"role": "user", "content": prompt})
    return messages


async def compare_stream(
    client: TuneserveClient,
    models: Sequence[str | None],
    messages_per_slot: Sequence[list[dict[str, str]] | None],
    params: SamplingParams,
    *,
    min_interval_s: float = 0.1,
) -> AsyncIterator[list[SlotState]]:
    """Run one chat stream per non-empty slot concurrently; yield snapshots of all slots.

    Snapshots come at most every ``min_interval_s`` (a browser cannot use more) plus one
    final snapshot when every stream has ended. A failing model marks only its own slot.
    """
    slots = [SlotState(model=m or None) for m in models]
    queue: asyncio.Queue[tuple[int, StreamEvent | ServerError | None]] = asyncio.Queue()

    async def pump(index: int, model: str, messages: list[dict[str, str]]) -> None:
        try:
            async for event in client.stream_chat(model, messages, params):
                await queue.put((index, event))
        except ServerError as exc:
            await queue.put((index, exc))
        except Exception as exc:  # noqa: BLE001 - shown in the slot, never a traceback
            await queue.put((index, ServerError(f"Unexpected error: {exc}")))
        finally:
            await queue.put((index, None))

    tasks = []
    for index, slot in enumerate(slots):
        messages = messages_per_slot[index] if index < len(messages_per_slot) else None
        if slot.model and messages:
            slot.running = True
            tasks.append(asyncio.create_task(pump(index, slot.model, messages)))
    pending = len(tasks)
    if not pending:
        yield slots
        return
    last = 0.0
    try:
        yield slots
        while pending:
            index, item = await queue.get()
            slot = slots[index]
            if item is None:
                pending -= 1
                slot.running = False
            elif isinstance(item, ServerError):
                slot.error = str(item)
            elif item.done:
                slot.stats = item
            else:
                slot.text += item.delta
            now = time.monotonic()
            if now - last >= min_interval_s or not pending:
                last = now
                yield slots
    finally:
        for task in tasks:
            task.cancel()


def curl_snippet(
    base_url: str, model: str, messages: list[dict[str, str]], params: SamplingParams
) -> str:
    """The equivalent streaming ``curl`` call (key read from $TUNESERVE_API_KEY)."""
    body = {"model": model, "messages": messages, "stream": True, **params.to_request()}
    return "\n".join(
        [
            f"curl -N {shlex.quote(base_url.rstrip('/') + '/v1/chat/completions')} \\",
            '  -H "Authorization: Bearer $TUNESERVE_API_KEY" \\',
            "  -H 'Content-Type: application/json' \\",
            f"  -d {shlex.quote(json.dumps(body, ensure_ascii=False))}",
        ]
    )


def openai_snippet(
    base_url: str, model: str, messages: list[dict[str, str]], params: SamplingParams
) -> str:
    """The equivalent call with the official ``openai`` Python SDK."""
    kwargs = params.to_request()
    lines = [
        "import os",
        "from openai import OpenAI",
        "",
        # Messages hold only strings, so their JSON is also a valid Python literal.
        f"messages = {json.dumps(messages, ensure_ascii=False, indent=4)}",
        "",
        "client = OpenAI(",
        f"    base_url={base_url.rstrip('/') + '/v1'!r},",
        '    api_key=os.environ.get("TUNESERVE_API_KEY", "none"),',
        ")",
        "stream = client.chat.completions.create(",
        f"    model={model!r},",
        "    messages=messages,",
    ]
    lines += [f"    {key}={value!r}," for key, value in kwargs.items()]
    lines += [
        "    stream=True,",
        ")",
        "for chunk in stream:",
        "    if chunk.choices and chunk.choices[0].delta.content:",
        '        print(chunk.choices[0].delta.content, end="", flush=True)',
    ]
    return "\n".join(lines)


@dataclass
class SnippetRequest:
    """Everything needed to render the snippets for the selected models."""

    base_url: str
    models: list[str] = field(default_factory=list)
    messages: list[list[dict[str, str]]] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)

    def render(self, kind: str) -> str:
        """All selected models' calls, one after another (``kind``: "curl" or "openai")."""
        render = curl_snippet if kind == "curl" else openai_snippet
        blocks = [
            f"# {model}\n{render(self.base_url, model, messages, self.params)}"
            for model, messages in zip(self.models, self.messages, strict=False)
        ]
        return "\n\n".join(blocks) if blocks else "# pick at least one model"


# ---- the tab -----------------------------------------------------------------------


def _split_slots(values: tuple[Any, ...]) -> tuple[list[str | None], list[list[dict]]]:
    models = [v or None for v in values[:MAX_SLOTS]]
    histories = [list(v or []) for v in values[MAX_SLOTS : 2 * MAX_SLOTS]]
    return models, histories


async def send_prompt(
    server: str,
    api_key: str,
    system_prompt: str,
    prompt: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    seed: float | None,
    *slots: Any,
):
    """Stream one prompt to every selected model; yields (chats..., stats..., status)."""
    models, histories = _split_slots(slots)
    unchanged = [gr.skip()] * (2 * MAX_SLOTS)
    if not prompt or not prompt.strip():
        gr.Warning("Type a prompt first.")
        yield (*unchanged, "Type a prompt first.")
        return
    if not any(models):
        gr.Warning("Pick at least one model.")
        yield (*unchanged, "Pick at least one model.")
        return
    try:
        client = connect(server, api_key)
    except ServerError as exc:
        yield (*unchanged, refusal(exc))
        return
    params = SamplingParams(
        temperature=float(temperature),
        top_p=float(top_p),
        max_tokens=int(max_tokens),
        seed=seed_value(seed),
    )
    messages = [
        build_messages(system_prompt, histories[i], prompt) if models[i] else None
        for i in range(MAX_SLOTS)
    ]
    warned: set[int] = set()
    async for states in compare_stream(client, models, messages, params):
        chats, stats = [], []
        for i, state in enumerate(states):
            if not state.model:
                chats.append(gr.skip())
                stats.append("")
                continue
            turn = [{"role": "user", "content": prompt}]
            if state.text or not state.error:
                turn.append({"role": "assistant", "content": state.text or "…"})
            chats.append(histories[i] + turn)
            stats.append(state.stats_line())
            if state.error and i not in warned:
                warned.add(i)
                gr.Warning(f"{state.model}: {state.error}")
        running = sum(s.running for s in states)
        errors = [f"⚠️ {s.model}: {s.error}" for s in states if s.error]
        status = "\n\n".join(errors) or (f"Generating… ({running} running)" if running else "Done.")
        yield (*chats, *stats, status)


def clear_chats() -> tuple[Any, ...]:
    """Empty every column's history and stats."""
    return (*([[]] * MAX_SLOTS), *([""] * MAX_SLOTS), "")


def render_snippet(
    server: str,
    system_prompt: str,
    prompt: str,
    kind: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    seed: float | None,
    *slots: Any,
) -> Any:
    """The ``curl`` / ``openai`` equivalent of the current Compare inputs."""
    models, histories = _split_slots(slots)
    chosen = [i for i, m in enumerate(models) if m]
    request = SnippetRequest(
        base_url=(server or "").rstrip("/"),
        models=[models[i] for i in chosen],
        messages=[build_messages(system_prompt, histories[i], prompt or "...") for i in chosen],
        params=SamplingParams(float(temperature), float(top_p), int(max_tokens), seed_value(seed)),
    )
    language = "shell" if kind == "curl" else "python"
    return gr.update(value=request.render(kind), language=language)


def compare_tab(server: gr.State, key: gr.State) -> list[gr.Dropdown]:
    system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="system-prompt")
    dropdowns, chats, stats = [], [], []
    with gr.Row(equal_height=False):
        for index in range(MAX_SLOTS):
            with gr.Column(min_width=220):
                dropdowns.append(
                    gr.Dropdown(
                        choices=[],
                        value=None,
                        label="Base model" if index == 0 else f"Adapter {index}",
                        allow_custom_value=True,
                        elem_id=f"model-{index}",
                    )
                )
                chats.append(
                    gr.Chatbot(
                        label=f"Answers {index + 1}",
                        height=360,
                        elem_id=f"answer-{index}",
                        feedback_options=None,
                        # Model output is shell commands full of `$`: no LaTeX rendering.
                        latex_delimiters=[],
                        buttons=["copy"],
                    )
                )
                stats.append(gr.Markdown(elem_id=f"stats-{index}"))
    with gr.Row():
        prompt = gr.Textbox(
            label="Prompt",
            lines=2,
            scale=4,
            elem_id="prompt",
            placeholder="Ask all selected models at once",
        )
        with gr.Column(scale=1, min_width=120):
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear history", elem_id="clear")
    status = gr.Markdown(elem_id="compare-status")
    with gr.Accordion("Generation parameters", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p")
            max_tokens = gr.Slider(1, 1024, value=64, step=1, label="max tokens")
            seed = gr.Number(value=None, precision=0, label="seed (empty = random)")
    with gr.Accordion("Copy as curl / openai", open=False):
        kind = gr.Radio(["curl", "openai"], value="curl", show_label=False)
        snippet = gr.Code(language="shell", buttons=["copy"], elem_id="snippet", interactive=False)

    params = [temperature, top_p, max_tokens, seed]
    inputs = [server, key, system, prompt, *params, *dropdowns, *chats]
    outputs = [*chats, *stats, status]
    snippet_inputs = [server, system, prompt, kind, *params, *dropdowns, *chats]
    for trigger in (send.click, prompt.submit):
        trigger(send_prompt, inputs, outputs).then(render_snippet, snippet_inputs, snippet)
    clear.click(clear_chats, None, outputs)
    kind.change(render_snippet, snippet_inputs, snippet)
    return dropdowns
