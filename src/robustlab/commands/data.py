"""`robustlab data [NAME ...]`: which datasets are available, where, how big; downloads."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="list datasets: where they were found, sizes, checksums",
        description="List the registered datasets (or the NAMEs given: registered names, .npz "
        "files or dataset folders): where their files were found, or where they were looked for "
        "and how to get them; train/test sizes, image shape, classes, bytes on disk and whether "
        "the files match their published checksums. Search order: --data-dir, $ROBUSTLAB_DATA, "
        "~/.cache/robustlab/NAME, /usr/share/datasets/NAME. Exit status 1 when a named dataset "
        "is missing or a checksum does not match.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="datasets to show (default: every registered one)")
    p.add_argument("--data-dir", default=None, help="folder searched first (itself and DIR/NAME)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the checksum check (only reads file headers: faster)")
    p.add_argument("--download", action="store_true",
                   help="download the NAMEd datasets that are missing (into --data-dir/NAME or "
                   "~/.cache/robustlab/NAME), checking published checksums")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=run)


def _status(d: dict) -> str:
    if d["status"] == "found":
        return {"ok": "found, verified", "unverified": "found, unverified",
                "not checked": "found"}.get(d.get("checksums", ""), "found")
    return d["status"]


def run(args: argparse.Namespace) -> int:
    from robustlab import data
    from robustlab.data_files import FILE_DATASETS, fetch
    from robustlab.errors import UserError

    names = args.names or data.names()
    if not args.download:  # a download creates its target folder
        data.check_data_dir(args.data_dir)
    if args.download:
        if not args.names:
            raise UserError("--download needs the NAMEs of the datasets to fetch; downloadable: "
                            + ", ".join(FILE_DATASETS))
        for name in names:
            key = data.canonical(name)
            if key not in FILE_DATASETS:
                raise UserError(f"cannot download {name!r}; downloadable: "
                                f"{', '.join(FILE_DATASETS)}")
            if data.files.locate(key, args.data_dir) is None:
                print(f"downloading {key} ...")
                print(f"{key}: files in {fetch(key, args.data_dir)}")
    infos = [data.info(n, args.data_dir, verify=not args.no_verify) for n in names]
    unknown = [d for d in infos if d["status"] == "error" and "unknown dataset" in d.get("error", "")]
    if unknown:  # a name that means nothing is a usage error, not a missing dataset
        raise UserError(unknown[0]["error"])
    # a named .npz file or folder that cannot be used as a dataset is a usage error too
    unusable = [d for d in infos if d["status"] == "error" and d.get("kind") not in ("files",)
                and data.canonical(d["name"]) not in data.LOADERS]
    if unusable:
        raise UserError(f"{unusable[0]['name']} is not a usable dataset: {unusable[0]['error']}")
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        rows = [("dataset", "status", "train", "test", "shape", "classes", "size", "location")]
        for d in infos:
            shape = "×".join(str(s) for s in d["shape"]) if d.get("shape") else "-"
            rows.append((d["name"], _status(d), str(d.get("train", "-")),
                         str(d.get("test", "-")), shape, str(d.get("num_classes", "-")),
                         data.format_size(d.get("bytes")), d.get("location", "-")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        right = {2, 3, 5}
        for r in rows:
            cells = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))]
            print("  ".join(cells).rstrip())
        for d in infos:
            if d["status"] == "missing":
                print(f"{d['name']}: looked in {', '.join(d['searched'])}; {d['hint']}")
            elif d["status"] == "error":
                print(f"{d['name']}: {d['error']}")
    named_missing = bool(args.names) and any(d["status"] == "missing" for d in infos)
    return 1 if named_missing or any(d["status"] == "error" for d in infos) else 0
