#!/usr/bin/env python3
"""`make compare`: mean and standard deviation over seeds of each pipeline's summary fields.

    aggregate_seeds.py OUT_DIR SUMMARY.json [SUMMARY.json ...]

Each SUMMARY.json is what `wsss summary --out` wrote for one seed. Writes OUT_DIR/compare.json and
OUT_DIR/compare.md and prints the Markdown table (mean ± sample standard deviation, n seeds).
"""
import json
import math
import os
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, files = sys.argv[1], sys.argv[2:]
    values = {}   # pipeline -> field -> [values]
    order, fields = [], []
    for path in files:
        try:
            rows = json.load(open(path))["rows"]
        except (OSError, ValueError, KeyError) as error:
            sys.exit(f"error: aggregate_seeds: {path}: {error}")
        for row in rows:
            name = row["pipeline"]
            if name not in order:
                order.append(name)
            for field, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if field not in fields:
                        fields.append(field)
                    values.setdefault(name, {}).setdefault(field, []).append(float(value))
    preferred = ["seed_miou", "refined_miou", "pseudo_miou", "pseudo_coverage", "psa_miou", "seg_val_miou"]
    fields = [f for f in preferred if f in fields] + sorted(f for f in fields if f not in preferred and f != "total_seconds") \
        + (["total_seconds"] if "total_seconds" in fields else [])
    result = {"seeds": len(files), "rows": []}
    lines = ["| pipeline | " + " | ".join(fields) + " |", "| --- |" + " --- |" * len(fields)]
    for name in order:
        row, cells = {"pipeline": name}, []
        for field in fields:
            xs = values[name].get(field, [])
            if not xs:
                cells.append("–")
                continue
            mean = sum(xs) / len(xs)
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            row[field] = {"mean": mean, "std": std, "n": len(xs)}
            cells.append(f"{mean:.0f} ± {std:.0f}" if field.endswith("seconds") else f"{mean:.3f} ± {std:.3f}")
        result["rows"].append(row)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = f"# Methods over {len(files)} seeds (mean ± standard deviation)\n\n" + "\n".join(lines) + "\n"
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(table)
    print(table, end="")


if __name__ == "__main__":
    main()
