#!/usr/bin/env python3
"""Tables and chart of a bench/compare.sh run (Herald, Mosquitto, nats-server side by side).

Reads OUT/<broker>-<scenario>/{result,max}.json (herald-bench --json-out), *.cmd (the command),
*.load (load average before the run), *.other (cores used by other processes during the run)
and OUT/machine.txt, all written by bench/compare.sh.

  bench/chart.py --out DIR --md FILE    markdown: targets, one table per scenario, commands
                                        (standard library only)
  bench/chart.py --out DIR --png FILE   grouped bars of delivered/s per fan-out scenario and
                                        broker, and KiB of broker RSS per idle connection
                                        (needs matplotlib)
"""

import argparse
import os
import sys

from benchfmt import cpu, f2, load, ms, n, ratio, read

NAMES = {
    "herald": "Herald durable",
    "herald-mem": "Herald memory-only",
    "mosquitto": "Mosquitto",
    "nats": "nats-server",
}
FANOUT = ("fanout100", "fanout1000", "distinct")
IDLE = ("idle10k", "idle50k")
TITLES = {
    "fanout100": "QoS 0 fan-out: 1 publisher → 100 subscribers",
    "fanout1000": "QoS 0 fan-out: 1 publisher → 1,000 subscribers",
    "distinct": "QoS 0: 100 publishers → 100 subscribers, one topic per publisher",
    "publish": "QoS 1 publish throughput",
    "idle10k": "10,000 idle connections, one subscription each",
    "idle50k": "50,000 idle connections, one subscription each",
    "half": "Latency at 50 % of the measured maximum (fanout100 at a fixed rate)",
}
SHORT = {
    "fanout100": "1 → 100",
    "fanout1000": "1 → 1,000",
    "distinct": "100 → 100 distinct",
}


def name(b):
    return NAMES.get(b, b)


def errors(r):
    e = r.get("errors") or {}
    return ", ".join(f"{k}: {v}" for k, v in e.items()) or "none"


class Report:
    def __init__(self, out, brokers, scenarios):
        self.out, self.brokers, self.scenarios = out, brokers, scenarios
        self.lines = []

    def p(self, line=""):
        self.lines.append(line)

    def rows(self, s, run="result"):
        return {b: load(self.out, b, s, run) for b in self.brokers}

    def bases(self, rows, key):
        m, na = rows.get("mosquitto"), rows.get("nats")
        return (m and m[key]), (na and na[key])

    def fanout(self, s):
        rows = self.rows(s)
        first = next((r for r in rows.values() if r), None)
        if not first:
            return
        mode = (f"{first['rate_per_publisher']:.0f}/s each" if first["rate_per_publisher"]
                else f"window {first['window']}")
        self.p(f"### {TITLES.get(s, s)}\n")
        self.p(f"QoS {first['qos']}, {first['publishers']} publisher(s) ({mode}), "
               f"{first['subscribers']:,} subscribers, topics: {first.get('topics', 'one')}, "
               f"{first['payload_bytes']} B payloads, {first['duration_s']:.0f} s.\n")
        self.p("| broker | delivered/s | × Mosquitto | × NATS | published/s | p50 | p99 | p99.9 "
               "| lost | errors | CPU broker / bench / other | load |")
        self.p("|---|---|---|---|---|---|---|---|---|---|---|---|")
        bm, bn = self.bases(rows, "delivered_per_second")
        for b, r in rows.items():
            if not r:
                self.p(f"| {name(b)} | failed | | | | | | | | | | |")
                continue
            lat = r["latency"]
            self.p(f"| {name(b)} | {n(r['delivered_per_second'])} | "
                   f"{ratio(r['delivered_per_second'], bm)} | "
                   f"{ratio(r['delivered_per_second'], bn)} | {n(r['published_per_second'])} | "
                   f"{ms(lat['p50_us'])} | {ms(lat['p99_us'])} | {ms(lat['p999_us'])} | "
                   f"{n(r['lost'])} of {n(r['expected'])} | {errors(r)} | {cpu(r)} | "
                   f"{r['_load']} |")
        self.p()

    def half(self):
        rows = self.rows("half")
        maxes = self.rows("half", "max")
        if not any(rows.values()):
            return
        self.p(f"### {TITLES['half']}\n")
        self.p("Each broker first runs fanout100 as fast as the window allows (the maximum), "
               "then the same at a fixed publish rate of half the publish rate it just reached, "
               "on the same broker process.\n")
        self.p("| broker | max published/s | max delivered/s | rate (50 %) | delivered/s | p50 "
               "| p99 | p99.9 | max | lost | CPU broker / bench / other | load |")
        self.p("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b, r in rows.items():
            m = maxes.get(b)
            if not r:
                self.p(f"| {name(b)} | {n(m['published_per_second']) if m else 'failed'} | "
                       "| | failed | | | | | | | |")
                continue
            lat = r["latency"]
            self.p(f"| {name(b)} | {n(m['published_per_second']) if m else '?'} | "
                   f"{n(m['delivered_per_second']) if m else '?'} | "
                   f"{r['rate_per_publisher']:,.0f}/s | {n(r['delivered_per_second'])} | "
                   f"{ms(lat['p50_us'])} | {ms(lat['p99_us'])} | {ms(lat['p999_us'])} | "
                   f"{ms(lat['max_us'])} | {n(r['lost'])} of {n(r['expected'])} | {cpu(r)} | "
                   f"{r['_load']} |")
        self.p()

    def publish(self):
        rows = self.rows("publish")
        first = next((r for r in rows.values() if r), None)
        if not first:
            return
        self.p(f"### {TITLES['publish']}\n")
        self.p(f"QoS {first['qos']}, {first['publishers']} publishers × {first['inflight']} "
               f"unacknowledged, own topic each, no subscribers, {first['payload_bytes']} B, "
               f"{first['duration_s']:.0f} s.\n")
        self.p("| broker | PUBACKs/s | × Mosquitto | × NATS | p50 | p99 | p99.9 | unacked "
               "| errors | CPU broker / bench / other | load |")
        self.p("|---|---|---|---|---|---|---|---|---|---|---|")
        bm, bn = self.bases(rows, "acked_per_second")
        for b, r in rows.items():
            if not r:
                self.p(f"| {name(b)} | failed | | | | | | | | | |")
                continue
            lat = r["ack_latency"]
            self.p(f"| {name(b)} | {n(r['acked_per_second'])} | "
                   f"{ratio(r['acked_per_second'], bm)} | {ratio(r['acked_per_second'], bn)} | "
                   f"{ms(lat['p50_us'])} | {ms(lat['p99_us'])} | {ms(lat['p999_us'])} | "
                   f"{n(r['unacked'])} | {errors(r)} | {cpu(r)} | {r['_load']} |")
        self.p()

    def idle(self, s):
        rows = self.rows(s)
        first = next((r for r in rows.values() if r), None)
        if not first:
            return
        self.p(f"### {first['connections']:,} idle connections, one subscription each "
               f"({s})\n")
        note = next((read(os.path.join(self.out, f"{b}-{s}", "note.txt")) for b in rows
                     if read(os.path.join(self.out, f"{b}-{s}", "note.txt"))), None)
        if note:
            self.p(f"**Not the planned 50,000:** {note}.\n")
        self.p("| broker | established | connect time | RSS before | RSS all open "
               "| **KiB per connection** | × Mosquitto | × NATS | RSS after close "
               "| other cores | load |")
        self.p("|---|---|---|---|---|---|---|---|---|---|---|")
        mib = lambda v: f"{v / 1048576:.1f} MiB"
        bm, bn = self.bases(rows, "bytes_per_connection")
        for b, r in rows.items():
            if not r:
                self.p(f"| {name(b)} | failed | | | | | | | | | |")
                continue
            kib = r["bytes_per_connection"] / 1024
            self.p(f"| {name(b)} | {n(r['established'])} ({r['failed']} failed) | "
                   f"{r['connect_s']:.2f} s | {mib(r['rss_before'])} | {mib(r['rss_after'])} | "
                   f"**{kib:.1f}** | {ratio(r['bytes_per_connection'], bm)} | "
                   f"{ratio(r['bytes_per_connection'], bn)} | {mib(r['rss_after_close'])} | "
                   f"{f2(r['_other'])} | {r['_load']} |")
        self.p()

    def targets(self):
        """The performance issue's targets, per Herald variant: met or missed, with numbers."""
        heralds = [b for b in self.brokers if b.startswith("herald")]
        if not heralds:
            return
        self.p("## Targets\n")
        self.p("| target | " + " | ".join(name(b) for b in heralds) + " |")
        self.p("|---|" + "---|" * len(heralds))
        verdict = lambda ok: "**met**" if ok else "**missed**"
        for s in (x for x in FANOUT if x in self.scenarios):
            rows = self.rows(s)
            m, na = rows.get("mosquitto"), rows.get("nats")
            for base, k, label in ((m, 2.0, "≥ 2× Mosquitto"), (na, 1.0, "≥ nats-server")):
                if not base:
                    continue
                cells = []
                for b in heralds:
                    r = rows.get(b)
                    if not r:
                        cells.append("failed")
                        continue
                    x = r["delivered_per_second"] / base["delivered_per_second"]
                    cells.append(f"{verdict(x >= k)}: {x:.2f}×")
                self.p(f"| {SHORT[s]} delivered/s {label} | " + " | ".join(cells) + " |")
        if "half" in self.scenarios:
            rows = self.rows("half")
            cells = []
            for b in heralds:
                r = rows.get(b)
                if not r:
                    cells.append("failed")
                    continue
                p99 = r["latency"]["p99_us"]
                cells.append(f"{verdict(p99 < 1000)}: p99 {ms(p99)}")
            self.p("| p99 publish-to-deliver < 1 ms at 50 % of the maximum | "
                   + " | ".join(cells) + " |")
        for s in (x for x in IDLE if x in self.scenarios):
            rows = self.rows(s)
            cells = []
            for b in heralds:
                r = rows.get(b)
                if not r:
                    cells.append("failed")
                    continue
                kib = r["bytes_per_connection"] / 1024
                cells.append(f"{verdict(kib <= 4 and r['failed'] == 0)}: {kib:.1f} KiB"
                             + (f", {r['failed']} failed" if r["failed"] else ""))
            first = next((r for r in rows.values() if r), None)
            count = f"{first['connections']:,}" if first else s[4:]
            self.p(f"| ≤ 4 KiB RSS per idle connection ({count}) | " + " | ".join(cells) + " |")
        if "publish" in self.scenarios:
            rows = self.rows("publish")
            cells = []
            for b in heralds:
                r = rows.get(b)
                if not r:
                    cells.append("failed")
                    continue
                ok = r["unacked"] == 0 and r["refused"] == 0 and not r["errors"]
                cells.append(f"{verdict(ok)}: {n(r['unacked'])} unacked, {n(r['refused'])} "
                             f"refused of {n(r['published'])}")
            self.p("| QoS 1: every publish acknowledged | " + " | ".join(cells) + " |")
        qos0 = [s for s in (*FANOUT, "half") if s in self.scenarios]
        if qos0:
            cells = []
            for b in heralds:
                lost = expected = 0
                for s in qos0:
                    r = load(self.out, b, s)
                    if r:
                        lost += r["lost"]
                        expected += r["expected"]
                cells.append(f"{n(lost)} of {n(expected)}")
            self.p("| QoS 0 messages lost (allowed by QoS 0; reported) | "
                   + " | ".join(cells) + " |")
        self.p()

    def commands(self):
        self.p("## Commands\n")
        self.p("Per scenario, as run against every broker (`$ADDR`: its MQTT listener, `$PID`: "
               "its process; user name and password in `MQTT_BENCH_USERNAME` / "
               "`MQTT_BENCH_PASSWORD`):\n")
        self.p("```sh")
        for s in self.scenarios:
            for run in ("max", "result"):
                cmd = None
                for b in self.brokers:
                    cmd = read(os.path.join(self.out, f"{b}-{s}", f"{run}.cmd"))
                    if cmd:
                        break
                if cmd:
                    self.p(f"# {s}{' (maximum first)' if run == 'max' else ''}")
                    self.p(cmd)
        self.p("```")

    def markdown(self):
        self.p("# Herald, Mosquitto, nats-server side by side (MQTT)\n")
        self.p("Generated by `bench/compare.sh` (tables: `bench/chart.py`); "
               "see docs/benchmarks.md, \"Side by side: Herald, Mosquitto, NATS\".\n")
        machine = read(os.path.join(self.out, "machine.txt"))
        if machine:
            self.p("```")
            self.p("\n".join(l for l in machine.splitlines() if l.strip() and not l.startswith("==")))
            self.p("```\n")
        self.p("CPU columns: cores used during the measurement by the broker, by herald-bench "
               "and by every other process on the machine; load: 1-minute load average before "
               "the run.\n")
        self.targets()
        self.p("## Results\n")
        for s in self.scenarios:
            if s in FANOUT:
                self.fanout(s)
            elif s == "publish":
                self.publish()
            elif s in IDLE:
                self.idle(s)
            elif s == "half":
                self.half()
        self.commands()
        return "\n".join(self.lines) + "\n"


def chart(out, brokers, scenarios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fan = [s for s in FANOUT if s in scenarios]
    idle = [s for s in IDLE if s in scenarios]
    panels = (1 if fan else 0) + (1 if idle else 0)
    if not panels:
        print("chart: no fan-out or idle scenario", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    colors = {"herald": "#1f77b4", "herald-mem": "#6baed6", "mosquitto": "#d62728",
              "nats": "#2ca02c"}
    width = 0.8 / max(len(brokers), 1)

    def bars(ax, groups, value, ylabel, title, fmt):
        for i, b in enumerate(brokers):
            vals = []
            for s in groups:
                r = load(out, b, s)
                vals.append(value(r) if r else 0)
            xs = [g + (i - (len(brokers) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, vals, width, label=name(b), color=colors.get(b))
            for x, v in zip(xs, vals):
                ax.annotate(fmt(v) if v else "failed", (x, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([SHORT.get(s, s) for s in groups])
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)

    k = 0
    if fan:
        bars(axes[k], fan, lambda r: r["delivered_per_second"] / 1e6,
             "deliveries per second (millions)", "QoS 0 fan-out, 100 B: delivered/s",
             lambda v: f"{v:.2f}")
        axes[k].legend(fontsize=8)
        k += 1
    if idle:
        bars(axes[k], idle, lambda r: r["bytes_per_connection"] / 1024,
             "KiB of broker RSS per connection", "Idle connections, one subscription each",
             lambda v: f"{v:.1f}")
        axes[k].axhline(4, color="black", linestyle="--", linewidth=0.8)
        axes[k].text(0.5, 4, "target: 4 KiB", transform=axes[k].get_yaxis_transform(),
                     fontsize=7, va="bottom", ha="center")
        def count(s):
            r = next((x for x in (load(out, b, s) for b in brokers) if x), None)
            return f"{r['connections']:,} connections" if r else s

        axes[k].set_xticklabels([count(s) for s in idle])
        if not fan:
            axes[k].legend(fontsize=8)
    fig.suptitle("Herald vs Mosquitto vs nats-server (MQTT 3.1.1, loopback, same machine)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="bench/compare.sh's output directory")
    ap.add_argument("--brokers", default="herald herald-mem mosquitto nats")
    ap.add_argument("--scenarios",
                    default="fanout100 fanout1000 distinct publish idle10k idle50k half")
    ap.add_argument("--md", help="write the markdown tables here ('-': stdout)")
    ap.add_argument("--png", help="write the chart here")
    a = ap.parse_args()
    brokers, scenarios = a.brokers.split(), a.scenarios.split()
    if not a.md and not a.png:
        a.md = "-"
    if a.md:
        text = Report(a.out, brokers, scenarios).markdown()
        if a.md == "-":
            sys.stdout.write(text)
        else:
            with open(a.md, "w") as f:
                f.write(text)
    if a.png:
        chart(a.out, brokers, scenarios, a.png)


if __name__ == "__main__":
    main()
