"""``fnas show``: print a run's genotype, exact cost, accuracy, export results and plots."""

from __future__ import annotations

import argparse

from fnas.app import runs
from fnas.app.spaces import space_type
from fnas.cli.common import cost_text, export_text, genotype_lines, plot_lines, space_text
from fnas.cost import genotype_cost


def cmd_show(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``fnas show``; returns the exit code."""
    run = runs.open_run(args.run)
    cost = genotype_cost(run.genotype, run.space)
    summary = run.summary or {}
    lines = [
        f"run       {run.path}/ ({run.config.get('command', 'search')} run, {space_type(run.space)} space)",
        f"data      {summary.get('data') or run.config.get('dataset') or run.data}",
        f"network   {space_text(run.space)}",
    ]
    if run.config.get("sized"):
        lines.append(f"space     {run.config['sized']}")
    lines += [
        "genotype" + (f" ({run.selection} selection)" if run.selection else ""),
        *genotype_lines(run.genotype, run.space),
        f"cost      {cost_text(cost)}",
    ]
    search = [r for r in runs.read_metrics(run.path) if r.get("phase") == "search"]
    if search:
        last = search[-1]
        seconds = summary.get("search_seconds")
        took = f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        if took and summary.get("resumed_seconds"):
            took += f" ({summary['resumed_seconds']:.0f} s of them before a resume)"
        if took and summary.get("selection_seconds", 0) >= 1:
            took += f", genotype selection {summary['selection_seconds']:.0f} s of them"
        lines.append(f"search    {len(search)} epochs{took}; last: supernet train acc "
                     f"{last.get('train_acc', float('nan')):.3f}"
                     + (f", valid acc {last['valid_acc']:.3f}" if "valid_acc" in last else ""))
    if isinstance(summary.get("test_acc"), (int, float)) and run.trained:
        lines.append(f"accuracy  {summary['test_acc']:.4f} on the held-out test split"
                     + (f" ({summary['test_samples']} samples)" if "test_samples" in summary else ""))
    else:
        lines.append(f"accuracy  not trained yet: run `fnas train {run.path}`")
    report = run.path / runs.EXPORT_REPORT
    if report.is_file():
        lines.append(export_text(runs.read_json(report, "export report"), run.path))
    elif run.trained:
        lines.append(f"export    not exported yet: run `fnas export {run.path}`")
    plots = runs.write_run_plots(run.path, genotype=run.genotype, space=run.space, alphas=runs.load_alphas(run.path),
                                 test_acc=summary.get("test_acc") if run.trained else None,
                                 warmup_epochs=run.warmup_epochs, selection=run.selection,
                                 missing_only=not args.replot)
    lines += ["plots", *plot_lines(plots)]
    print("\n".join(lines), flush=True)
    return 0
