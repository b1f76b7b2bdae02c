"""`robustlab report DIR`: one self-contained HTML report of every run under DIR."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML report of every run under a folder",
                       description="Read every run under DIR (model.json, metrics.jsonl, "
                       "results/*.json) and write one self-contained HTML file (figures embedded, "
                       "nothing loaded from the network): a headline (clean vs robust error per threat, "
                       "who is most robust to what within the 95 % intervals, the attack "
                       "evaluation's sanity flags), a summary table of every model × metric with "
                       "intervals (the same as `robustlab table DIR`), the figures of each "
                       "capability, training curves, and the commands and versions that produced "
                       "them.")
    p.add_argument("dir", metavar="DIR", help="folder holding run directories (or one run)")
    p.add_argument("--out", default=None, help="output file (default: DIR/report.html)")
    p.add_argument("--title", default=None, help="title of the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.report.html import write_report

    path, info = write_report(args.dir, args.out, title=args.title)
    print(f"report of {info['runs']} run(s) with {info['figures']} figure(s) written to {path}")
    for f in info["failures"]:
        print(f"  figure not drawn: {f}")
    return 0
