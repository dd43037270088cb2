"""The report three ways: a table for the terminal, the JSON file, and a PNG plot against concurrency.

The plot needs matplotlib, which vlmkit does not install: `plot_available()` says whether it is there,
so the command can refuse `--plot` before sending a single request.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCHEMA = "vlmkit.bench/1"

COLUMNS = (  # header, width, cell from a level
    ("conc", 5, lambda level: f"{level['concurrency']}"),
    ("reqs", 5, lambda level: f"{level['requests']}"),
    ("errors", 7, lambda level: f"{level['errors']}"),
    ("req/s", 8, lambda level: f"{level['requests_per_s']:.2f}"),
    ("out tok/s", 10, lambda level: f"{level['output_tok_per_s']:.1f}"),
    ("TTFT p50", 10, lambda level: _ms(level["ttft_s"]["p50"])),
    ("TTFT p95", 10, lambda level: _ms(level["ttft_s"]["p95"])),
    ("ITL p50", 9, lambda level: _ms(level["itl_s"]["p50"])),
    ("ITL p95", 9, lambda level: _ms(level["itl_s"]["p95"])),
    ("tok/s/req p50", 14, lambda level: _num(level["decode_tok_per_s"]["p50"], "{:.1f}")),
    ("e2e p50", 9, lambda level: _num(level["e2e_s"]["p50"], "{:.2f} s")),
    ("chunks!=usage", 14, lambda level: f"{level['chunk_usage_mismatches']}"),
)


def render_table(report: dict) -> str:
    config, workload = report["config"], report["workload"]
    images = workload["images"]
    sizes = sorted({f"{i['width']}x{i['height']}" for i in images})
    average_kb = sum(i["bytes"] for i in images) / len(images) / 1000
    length = f"max_tokens {config['max_tokens']}" + (" (fixed output)" if config["fixed_output"] else "")
    lines = [
        f"vlmkit bench: {config['model']} at {config['url']}",
        f"  workload: {len(images)} {workload['source']} image{'s' if len(images) != 1 else ''} "
        f"({', '.join(sizes[:3])}{', ...' if len(sizes) > 3 else ''}; {average_kb:,.0f} kB on average), "
        f"{len(workload['prompts'])} prompts, {length}",
        "",
        "".join(f"{header:>{width}}" for header, width, _ in COLUMNS),
    ]
    for level in report["levels"]:
        lines.append("".join(f"{cell(level):>{width}}" for _, width, cell in COLUMNS))
    lines.append("")
    lines.append("TTFT and ITL in ms; out tok/s = completion tokens of the level / its wall time;")
    lines.append("tok/s/req = (completion tokens - 1) / (last content chunk - first content chunk);")
    lines.append("chunks!=usage = answers whose chunk count differs from the server's token count (ITL per chunk)")
    for level in report["levels"]:
        for kind, count in level["errors_by_kind"].items():
            lines.append(f"  concurrency {level['concurrency']}: {count} x {kind}: {level['error_examples'].get(kind)}")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(report: dict, path: Path) -> None:
    """Latency and throughput against concurrency, one point per level, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    levels = report["levels"]
    x = [level["concurrency"] for level in levels]

    def series(metric: str, stat: str, scale: float = 1.0) -> list[float]:
        return [float("nan") if level[metric][stat] is None else level[metric][stat] * scale for level in levels]

    figure, (latency, gaps, throughput) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    latency.plot(x, series("ttft_s", "p50"), "o-", color="tab:blue", label="TTFT p50")
    latency.plot(x, series("ttft_s", "p95"), "o--", color="tab:blue", label="TTFT p95")
    latency.plot(x, series("e2e_s", "p50"), "s-", color="tab:green", label="end-to-end p50")
    latency.plot(x, series("e2e_s", "p95"), "s--", color="tab:green", label="end-to-end p95")
    latency.set(title="Request latency", xlabel="concurrent clients", ylabel="seconds")
    gaps.plot(x, series("itl_s", "p50", 1000), "o-", color="tab:purple", label="ITL p50")
    gaps.plot(x, series("itl_s", "p95", 1000), "o--", color="tab:purple", label="ITL p95")
    gaps.set(title="Inter-token latency", xlabel="concurrent clients", ylabel="milliseconds")
    throughput.plot(
        x, [level["output_tok_per_s"] for level in levels], "o-", color="tab:blue", label="total output tok/s"
    )
    throughput.plot(
        x, series("decode_tok_per_s", "p50"), "s-", color="tab:orange", label="decode tok/s per request (p50)"
    )
    throughput.set(title="Throughput", xlabel="concurrent clients", ylabel="tokens / s")
    per_second = throughput.twinx()
    per_second.plot(x, [level["requests_per_s"] for level in levels], "^:", color="tab:red", label="requests/s")
    per_second.set_ylabel("requests / s")
    handles, labels = throughput.get_legend_handles_labels()
    more_handles, more_labels = per_second.get_legend_handles_labels()
    throughput.legend(handles + more_handles, labels + more_labels, fontsize="small")
    for axes in (latency, gaps, throughput, per_second):
        axes.set_ylim(bottom=0)
    for axes in (latency, gaps, throughput):
        axes.set_xscale("log", base=2)
        axes.set_xticks(x, [str(c) for c in x])
        axes.minorticks_off()
        axes.grid(alpha=0.3)
    for axes in (latency, gaps):
        axes.legend(fontsize="small")
    config = report["config"]
    figure.suptitle(
        f"vlmkit bench: {config['model']}, max_tokens {config['max_tokens']}"
        + (" fixed" if config["fixed_output"] else "")
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
