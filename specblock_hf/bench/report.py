"""Benchmark outputs: JSON records, a Markdown table, and a figure of speedup and tau by category."""

import json
from pathlib import Path

from .runner import Record, adaptation_table, histogram_table, markdown_table, records_as_dicts


def write_report(prefix: str | Path, header: str, summary: dict, records: list[Record]) -> list[Path]:
    """Write `PREFIX.json`, `PREFIX.md` and `PREFIX.png`; returns their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary)
    histogram = histogram_table(summary)
    if histogram:
        table += f"\n\nAccepted length per round (share of rounds, all prompts):\n\n{histogram}"
    adaptation = adaptation_table(summary)
    if adaptation:
        table += f"\n\nOnline adaptation (all prompts):\n\n{adaptation}"
    paths = [prefix.with_suffix(".json"), prefix.with_suffix(".md"), prefix.with_suffix(".png")]
    paths[0].write_text(
        json.dumps({"header": header, "summary": summary, "records": records_as_dicts(records)}, indent=2)
    )
    paths[1].write_text(f"{header}\n\n{table}\n")
    plot(summary, paths[2], header)
    return paths


def plot(summary: dict, path: Path, title: str) -> None:
    """Two panels, speedup over plain and tau, one bar group per category, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in summary if m != "plain"]
    categories = sorted({c for m in methods for c in summary[m]}, key=lambda c: (c == "overall", c))
    figure, axes = plt.subplots(
        2, 1, figsize=(max(8, 0.9 * len(categories) * max(1, len(methods)) / 2), 7), sharex=True
    )
    width = 0.8 / max(1, len(methods))
    for offset, method in enumerate(methods):
        xs = [i + offset * width for i in range(len(categories))]
        axes[0].bar(xs, [summary[method].get(c, {}).get("speedup") or 0 for c in categories], width, label=method)
        axes[1].bar(xs, [summary[method].get(c, {}).get("tau") or 0 for c in categories], width, label=method)
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].set_ylabel("speedup vs plain")
    axes[1].set_ylabel("τ (mean acceptance length)")
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=45, ha="right")
    axes[0].legend()
    axes[0].set_title(title[:120], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
