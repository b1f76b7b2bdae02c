"""`robustlab table RUN…|DIR…`: the report's summary table in the terminal."""

from __future__ import annotations

import argparse

from robustlab.report.rows import FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="summary table of runs (metrics × models) in the terminal",
                       description="Read the results of every run under each PATH (a run "
                       "directory, or a folder of runs such as a demo or preset output) and print "
                       "the summary table of the HTML report: one row per metric with its "
                       "direction (↓/↑), what its interval is over (n), and per model the value "
                       "with its 95 % interval; '*' marks the best model where its interval is "
                       "separated from the runner-up's, '~' a row that cannot discriminate. The "
                       "numbers are those of `robustlab report` for the same runs.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run directory or folder of runs")
    p.add_argument("--format", choices=list(FORMATS), default="text",
                   help="text (aligned, default), md (Markdown), csv or json")
    p.add_argument("--metrics", default=None, metavar="KEYS",
                   help="comma-separated metric keys or globs, in the order to show them, e.g. "
                   "'Err,RErr linf,RErr@99%% *,RErr p=*' (default: every metric)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab.errors import UserError
    from robustlab.report import rows, summary

    for path in args.paths:
        if not Path(path).is_dir():
            raise UserError(f"table: {path} is not a folder (give a run directory or a folder "
                            "of runs)")
    runs = summary.collect_paths(list(args.paths))
    if not runs:
        raise UserError(f"table: no runs under {', '.join(args.paths)} (a run is a folder with "
                        "model.json)")
    table = rows.build_table(runs, args.metrics)
    if not table.rows:
        raise UserError(f"table: the runs under {', '.join(args.paths)} hold no results yet "
                        "(run `robustlab eval RUN` or another evaluation first)")
    text = rows.render(table, args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0
