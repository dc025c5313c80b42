"""Reports of a scored run: JSON (the full record), Markdown, and one self-contained HTML page.

The top of each report answers "does the adapter help?" in one line per candidate: a
metric counts as better or worse only when its 95% paired-bootstrap CI excludes zero.
Then the summary table (baseline vs each candidate: value, delta, CI), plots (bars per
metric, per-example scatter) embedded as base64 PNGs, and side-by-side examples: biggest
wins, biggest regressions, a random sample.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from evaluation.suite import METRIC_DIRECTIONS

# Order of rows in the summary table; text metrics first, they answer the question.
METRIC_ORDER = [
    "exact_match",
    "chrf",
    "bleu",
    "rouge_l",
    "judge_win_rate",
    "nll",
    "perplexity",
    "output_tokens",
    "latency_s",
    "tokens_per_s",
]
METRIC_LABELS = {
    "exact_match": "Exact match",
    "chrf": "chrF",
    "bleu": "BLEU",
    "rouge_l": "ROUGE-L",
    "judge_win_rate": "Judge win rate vs baseline",
    "nll": "Reference NLL (nats/token)",
    "perplexity": "Reference perplexity",
    "output_tokens": "Output tokens",
    "latency_s": "Latency (s)",
    "tokens_per_s": "Tokens/s per request",
}
EXAMPLES_PER_SECTION = 5


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _fmt(value)


def metric_rows(record: dict[str, Any]) -> list[str]:
    """Metrics present in the record, in table order."""
    present = set()
    for values in record["metrics"].values():
        present.update(values)
    return [m for m in METRIC_ORDER if m in present]


def verdict(record: dict[str, Any], label: str, metric: str) -> str:
    """``better`` / ``worse`` / ``no clear difference`` / ``–`` (no CI or neutral metric)."""
    comp = record.get("comparisons", {}).get(label, {}).get(metric)
    direction = METRIC_DIRECTIONS.get(metric, 0)
    if not comp or direction == 0 or metric in ("latency_s", "tokens_per_s"):
        return "–"
    if not comp["excludes_zero"]:
        return "no clear difference"
    return "better" if comp["delta"] * direction > 0 else "worse"


def headline(record: dict[str, Any]) -> list[str]:
    """One sentence per candidate saying whether it beats the baseline on quality metrics."""
    baseline = record["models"][0]["label"]
    lines = []
    quality = [
        m
        for m in metric_rows(record)
        if m in ("exact_match", "chrf", "bleu", "rouge_l", "judge_win_rate", "nll")
    ]
    for model in record["models"][1:]:
        label = model["label"]
        better = [m for m in quality if verdict(record, label, m) == "better"]
        worse = [m for m in quality if verdict(record, label, m) == "worse"]
        if better and not worse:
            state = f"HELPS: {label} beats {baseline} on " + ", ".join(
                METRIC_LABELS[m] for m in better
            )
        elif worse and not better:
            state = f"HURTS: {label} is worse than {baseline} on " + ", ".join(
                METRIC_LABELS[m] for m in worse
            )
        elif better and worse:
            state = (
                f"MIXED: {label} is better on {', '.join(METRIC_LABELS[m] for m in better)} "
                f"and worse on {', '.join(METRIC_LABELS[m] for m in worse)}"
            )
        else:
            state = f"NO CLEAR DIFFERENCE between {label} and {baseline} (95% CIs include zero)"
        lines.append(state)
    return lines


def summary_table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: metric, baseline value, then per candidate value / delta / CI / verdict."""
    labels = [m["label"] for m in record["models"]]
    header = ["Metric", labels[0]]
    for label in labels[1:]:
        header += [label, f"Δ {label}", "95% CI", "verdict"]
    rows = []
    for metric in metric_rows(record):
        row = [METRIC_LABELS[metric], _fmt(record["metrics"][labels[0]].get(metric))]
        for label in labels[1:]:
            comp = record["comparisons"].get(label, {}).get(metric)
            row.append(_fmt(record["metrics"][label].get(metric)))
            if comp:
                row += [_signed(comp["delta"]), f"[{_fmt(comp['low'])}, {_fmt(comp['high'])}]"]
            else:
                row += ["–", "–"]
            row.append(verdict(record, label, metric))
        rows.append(row)
    return header, rows


def primary_metric(record: dict[str, Any]) -> str:
    """The per-example score used to rank wins and regressions (chrF when present: graded,
    unlike exact match)."""
    text = record["suite_config"]["metrics"]
    return "chrf" if "chrf" in text else text[0]


def example_sections(record: dict[str, Any], label: str) -> dict[str, list[dict[str, Any]]]:
    """Biggest wins, biggest regressions and a seeded random sample for one candidate."""
    baseline = record["models"][0]["label"]
    metric = primary_metric(record)
    scored = [
        (ex["scores"][label][metric] - ex["scores"][baseline][metric], ex)
        for ex in record["examples"]
    ]
    ordered = sorted(scored, key=lambda pair: pair[0])
    wins = [ex for d, ex in reversed(ordered) if d > 0][:EXAMPLES_PER_SECTION]
    losses = [ex for d, ex in ordered if d < 0][:EXAMPLES_PER_SECTION]
    rng = random.Random(0)
    sample = rng.sample(record["examples"], min(EXAMPLES_PER_SECTION, len(record["examples"])))
    return {"Biggest wins": wins, "Biggest regressions": losses, "Random sample": sample}


def _prompt_text(ex: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in ex["messages"] if m["role"] != "system")


# ---------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(record: dict[str, Any]) -> str:
    """The report as Markdown (what a PR comment or a terminal shows)."""
    labels = [m["label"] for m in record["models"]]
    out = [f"# Evaluation: {record['suite']}", ""]
    out += [f"**{line}**" for line in headline(record)] + [""]
    out += _regression_lines_md(record)
    ds = record["dataset"]
    out.append(
        f"{ds['held_out_rows']} held-out examples from `{Path(ds['path']).name}` "
        f"(split seed {ds['seed']}, from {ds['split_source']}); server {record['server']}; "
        f"{record['started_at']}."
    )
    out += ["", "## Summary", ""]
    header, rows = summary_table(record)
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out.append("")
    out.append(
        "Δ = candidate − baseline, mean over examples; CI: 95% paired bootstrap (2000 resamples). "
        "A verdict needs the CI to exclude zero. Judge win rate: 0.5 = tie; its Δ is against 0.5."
    )
    for note in record.get("notes", []):
        out.append(f"\n> note: {note}")
    metric = primary_metric(record)
    for label in labels[1:]:
        for title, examples in example_sections(record, label).items():
            out += ["", f"## {title}: {label} vs {labels[0]} (by {METRIC_LABELS[metric]})", ""]
            if not examples:
                out.append("none")
                continue
            out.append(f"| prompt | reference | {labels[0]} | {label} |")
            out.append("|---|---|---|---|")
            for ex in examples:
                cells = [
                    _prompt_text(ex),
                    ex["reference"],
                    ex["outputs"][labels[0]]["text"],
                    ex["outputs"][label]["text"],
                ]
                out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


def _regression_lines_md(record: dict[str, Any]) -> list[str]:
    reg = record.get("regression") or {}
    if not reg.get("regressions"):
        return []
    lines = [f"**REGRESSION against run #{reg['previous_run_id']}:**", ""]
    lines += [f"- {r['description']}" for r in reg["regressions"]]
    return [*lines, ""]


# ---------------------------------------------------------------- plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_bars(record: dict[str, Any]) -> str:
    """Grouped bars per metric (one panel per metric), CI whiskers on candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m["label"] for m in record["models"]]
    metrics = [m for m in metric_rows(record) if m not in ("perplexity",)]
    cols = min(4, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values, errs = [], [[], []]
        base_value = record["metrics"][labels[0]].get(metric) or 0.0
        for i, label in enumerate(labels):
            v = record["metrics"][label].get(metric)
            values.append(v if v is not None else 0.0)
            comp = record["comparisons"].get(label, {}).get(metric) if i else None
            if comp and metric != "judge_win_rate":
                # The CI is on the delta; draw it around the candidate's value.
                errs[0].append(max(0.0, comp["delta"] - comp["low"]))
                errs[1].append(max(0.0, comp["high"] - comp["delta"]))
            else:
                errs[0].append(0.0)
                errs[1].append(0.0)
        ax.bar(labels, values, yerr=errs, capsize=4, color=colors[: len(labels)])
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.tick_params(labelsize=8)
        if metric != "judge_win_rate":
            ax.axhline(base_value, color="grey", lw=0.8, ls="--")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_scatter(record: dict[str, Any], label: str) -> str:
    """Per-example primary-metric score: baseline (x) vs candidate (y); above the diagonal
    the candidate wins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = record["models"][0]["label"]
    metric = primary_metric(record)
    xs = [ex["scores"][baseline][metric] for ex in record["examples"]]
    ys = [ex["scores"][label][metric] for ex in record["examples"]]
    top = max([*xs, *ys, 1.0])
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(xs, ys, s=12, alpha=0.5)
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"{baseline} {METRIC_LABELS[metric]}")
    ax.set_ylabel(f"{label} {METRIC_LABELS[metric]}")
    wins = sum(y > x for x, y in zip(xs, ys, strict=True))
    losses = sum(y < x for x, y in zip(xs, ys, strict=True))
    ax.set_title(f"per example: {wins} better, {losses} worse", fontsize=9)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{margin-bottom:4px} .meta{color:#666;font-size:13px}
.headline{font-size:20px;font-weight:600;padding:10px 14px;border-radius:6px;margin:8px 0}
.helps{background:#e3f6e8;color:#135c2c}.hurts{background:#fde7e7;color:#8a1c1c}
.mixed,.none{background:#fff6dd;color:#6b4e00}
.regression{background:#8a1c1c;color:#fff;padding:10px 14px;border-radius:6px}
table{border-collapse:collapse;margin:10px 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.better{background:#e3f6e8} td.worse{background:#fde7e7}
table.examples td{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:360px}
img{max-width:100%} .note{color:#6b4e00}
"""


def render_html(record: dict[str, Any]) -> str:
    """One self-contained page (inline CSS, plots as data: URIs, no scripts)."""
    esc = html.escape
    labels = [m["label"] for m in record["models"]]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation {esc(record['suite'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation: {esc(record['suite'])}</h1>",
    ]
    ds = record["dataset"]
    parts.append(
        f"<div class='meta'>{ds['held_out_rows']} held-out examples from "
        f"{esc(Path(ds['path']).name)} (split seed {ds['seed']}, {esc(ds['split_source'])}) · "
        f"server {esc(record['server'])} · {esc(record['started_at'])}</div>"
    )
    for line in headline(record):
        css = line.split(":")[0].split(" ")[0].lower()
        css = {"helps": "helps", "hurts": "hurts", "mixed": "mixed"}.get(css, "none")
        parts.append(f"<div class='headline {css}'>{esc(line)}</div>")
    reg = record.get("regression") or {}
    if reg.get("regressions"):
        items = "".join(f"<li>{esc(r['description'])}</li>" for r in reg["regressions"])
        parts.append(
            f"<div class='regression' id='regression'><b>REGRESSION against run "
            f"#{reg['previous_run_id']}</b><ul>{items}</ul></div>"
        )
    header, rows = summary_table(record)
    parts.append("<h2>Summary</h2><table id='summary'><thead><tr>")
    parts += [f"<th>{esc(h)}</th>" for h in header]
    parts.append("</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>")
        for cell in row:
            css = f" class='{cell}'" if cell in ("better", "worse") else ""
            parts.append(f"<td{css}>{esc(cell)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    parts.append(
        "<p class='meta'>Δ = candidate − baseline (mean over examples); 95% CI from a paired "
        "bootstrap with 2000 resamples; a verdict needs the CI to exclude zero.</p>"
    )
    for note in record.get("notes", []):
        parts.append(f"<p class='note'>note: {esc(note)}</p>")
    parts.append("<h2>Metrics</h2>")
    parts.append(f"<img alt='bars per metric' src='data:image/png;base64,{plot_bars(record)}'>")
    for label in labels[1:]:
        parts.append(
            f"<img alt='per-example scatter {esc(label)}' "
            f"src='data:image/png;base64,{plot_scatter(record, label)}'>"
        )
    metric = primary_metric(record)
    for label in labels[1:]:
        for title, examples in example_sections(record, label).items():
            parts.append(
                f"<h2>{esc(title)}: {esc(label)} vs {esc(labels[0])} "
                f"<small>(by {METRIC_LABELS[metric]})</small></h2>"
            )
            if not examples:
                parts.append("<p>none</p>")
                continue
            parts.append(
                f"<table class='examples'><tr><th>prompt</th><th>reference</th>"
                f"<th>{esc(labels[0])}</th><th>{esc(label)}</th></tr>"
            )
            for ex in examples:
                cells = [
                    _prompt_text(ex),
                    ex["reference"],
                    ex["outputs"][labels[0]]["text"],
                    ex["outputs"][label]["text"],
                ]
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def write_reports(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    paths["json"].write_text(json.dumps(record, indent=2, default=str))
    paths["markdown"].write_text(render_markdown(record))
    paths["html"].write_text(render_html(record))
    return paths


def report_dir_name(record: dict[str, Any]) -> str:
    """``<suite>-<UTC timestamp>``: sortable, unique per run, safe in a URL."""
    stamp = datetime.fromisoformat(record["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    return f"{record['suite']}-{stamp}"
