"""`robustlab reproduce PRESET --scale S`: regenerate a paper's main table at Fashion-MNIST scale."""

from __future__ import annotations

import argparse

from robustlab.commands.demo import add_preset_options, command_line, load_preset

PAPERS = ("bit-errors", "ccat", "flatness", "patches")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="regenerate a paper's main table from a YAML preset",
                       description="Train and evaluate the models of one paper's main table with "
                       "the settings of configs/PRESET.yaml at the chosen scale, print the table "
                       "next to the paper's qualitative findings with ✓/✗ per finding, and write "
                       "OUT/table.json and OUT/report.html. Re-running reuses finished steps.")
    p.add_argument("preset", metavar="PRESET",
                   help=f"one of {', '.join(PAPERS)}, or a preset YAML file")
    add_preset_options(p, None, "output folder (default: runs/reproduce/PRESET-SCALE)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab import experiments

    preset = load_preset(args.config or args.preset, args)
    out = args.out or f"runs/reproduce/{preset['name']}-{preset['scale'] or 'default'}"
    res = experiments.run_preset(preset, out, fresh=args.fresh, device=args.device,
                                 data_dir=args.data_dir, progress=False if args.quiet else None,
                                 command=command_line(args, args.preset))
    title = preset.get("title") or preset["name"]
    print(f"\n{title} (scale {preset['scale']}; errors in %)")
    if preset.get("paper"):
        print(f"paper: {preset['paper']}")
    print(experiments.format_table(res["table"]))
    if res["findings"]:
        print("\nfindings of the paper (spec §9):")
        print(experiments.format_findings(res["findings"]))
    print(f"\ntable written to {Path(out) / 'table.json'}, report to {res['report']}")
    return 0
