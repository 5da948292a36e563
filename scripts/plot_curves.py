"""Learning curves of run directories as a PNG, with a table of their final values.

    python scripts/plot_curves.py --title cartpole-swingup \\
        --runs "PlaNet=runs/planet-state-s*;overshooting=runs/planet-os" \\
        --refs "PlaNet paper, pixels, 1M steps=821" --out docs/figures/planet.png

--runs: groups "label=glob" separated by ";"; the run directories a glob matches are the seeds
of its curve (mean line, ± one std shaded). --refs: published scores "label=value" as dashed
lines. Writes the PNG and prints the markdown table of each curve's final and best value.
"""

from dataclasses import dataclass
from glob import glob

from wmrl.infra import command, parse_config
from wmrl.infra.curves import Panel, final_table, group_curve, plot_panels


@dataclass
class CurvesConfig:
    runs: str = ""  # curves "label=glob[;label=glob...]": each glob's run directories are seeds
    metric: str = "eval/return"  # the metrics.jsonl key to draw
    refs: str = ""  # reference lines "label=value[;label=value...]" (published scores)
    title: str = ""  # the panel's title
    xlabel: str = "env steps"
    ylabel: str = "eval return"
    out: str = "curves.png"  # the PNG written


def pairs(text: str, what: str) -> list[tuple[str, str]]:
    """ "a=b;c=d" -> [("a", "b"), ("c", "d")], with one clear error for a part without "="."""
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        label, sep, value = part.rpartition("=")
        if not sep or not label.strip() or not value.strip():
            raise ValueError(f"{what}: {part!r} is not label=value; separate parts with ';'")
        out.append((label.strip(), value.strip()))
    return out


def main(argv=None):
    cfg, _ = parse_config(CurvesConfig, argv=argv, description=__doc__)
    groups = pairs(cfg.runs, "--runs")
    if not groups:
        raise ValueError('--runs is empty: give "label=glob", e.g. --runs "PlaNet=runs/planet*"')
    curves = {}
    for label, pattern in groups:
        dirs = sorted(glob(pattern))
        if not dirs:
            raise ValueError(f"--runs {label}: no run directory matches {pattern!r}")
        curves[label] = group_curve(dirs, cfg.metric)
    refs = {}
    for label, value in pairs(cfg.refs, "--refs"):
        try:
            refs[label] = float(value)
        except ValueError:
            raise ValueError(f"--refs {label}: {value!r} is not a number") from None
    panel = Panel(cfg.title or cfg.metric, curves, refs, cfg.xlabel, cfg.ylabel)
    path = plot_panels([panel], cfg.out)
    table = final_table(curves)
    print(table + f"\nwrote {path}")
    return table


if __name__ == "__main__":
    command(main)
