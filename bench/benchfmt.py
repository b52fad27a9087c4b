"""Reading and formatting herald-bench results, shared by bench/chart.py and the summaries of
bench/mqtt.sh and bench/listen.sh (standard library only).

A run's files live in OUT/<name>-<scenario>/: <run>.json (herald-bench --json-out), and,
where the script writes them, <run>.load (load average before the run), <run>.other (cores used
by other processes) and <run>.cmd (the command).
"""

import json
import os


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def load(out, name, scenario, run="result"):
    """The result of one run, with `_load`, `_other` and `_cmd` added; None when missing."""
    d = os.path.join(out, f"{name}-{scenario}")
    text = read(os.path.join(d, f"{run}.json"))
    if not text:
        return None
    try:
        r = json.loads(text)
    except ValueError:
        return None
    r["_load"] = (read(os.path.join(d, f"{run}.load")) or "?").split()[0]
    other = read(os.path.join(d, f"{run}.other"))
    r["_other"] = float(other) if other else None
    r["_cmd"] = read(os.path.join(d, f"{run}.cmd"))
    return r


def ms(us):
    return f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"


def n(x):
    return f"{x:,.0f}"


def ratio(x, base):
    return f"{x / base:.2f}×" if base else "–"


def f2(v):
    return "?" if v is None else f"{v:.2f}"


def cpu(r):
    """Cores used by the server, herald-bench and other processes during the run."""
    c = r.get("cpu") or {}
    other = c.get("other_cores")
    if other is None:
        other = r.get("_other")
    return f"{f2(c.get('server_cores'))} / {f2(c.get('bench_cores'))} / {f2(other)}"
