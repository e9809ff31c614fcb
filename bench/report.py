"""Benchmark reports, generated from their data: every bench/results/<benchmark>.md from the JSON files its
script wrote (<benchmark>.json, and variants such as <benchmark>_3rounds.json whose "benchmark" field names it).

Every figure of a report comes from its JSON. The one part written by hand is the section under NOTES, which
this script keeps as it is; it may state no figure (no number outside `code`) that the generated part lacks.

    .venv/bin/python bench/report.py            # (re)write every report
    .venv/bin/python bench/report.py --check    # exit 1 when a report differs from what its JSON renders,
                                                # or its notes state a figure the JSON lacks (make test runs it)
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NOTES = "## Notes (written by hand; every figure in them appears above)"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


# --- formatting -----------------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def load(values) -> str:
    return " / ".join(num(v, 1) for v in values) if values else "-"


def machine_line(m: dict) -> str:
    versions = dict(m.get("versions") or {})
    for key in ("python", "mlflow", "flwr", "scikit-learn"):  # reports written before versions were grouped
        if key in m:
            versions.setdefault(key, m[key])
    line = (f"{m['cores']} cores of {m['cpu']}, {num(m['memory_gb'])} GB, {m['os']}; "
            + ", ".join(f"{name} {value}" for name, value in versions.items()) + ".")
    loads = [f"{load(m['load_average_at_start'])} at the start"] if "load_average_at_start" in m else []
    if "load_average_at_end" in m:
        loads.append(f"{load(m['load_average_at_end'])} at the end")
    elif "load_average" in m:
        loads.append(f"{load(m['load_average'])} when written")
    if loads:
        line += f" Load average (1 / 5 / 15 min): {', '.join(loads)}."
    return line


def section(name: str, command: str, data: dict) -> str:
    """The heading of one JSON file's results: its name, the command that wrote it, when, and on what machine."""
    return f"## {name}: `{command}` ({data.get('date') or data.get('started')})\n\n{machine_line(data['machine'])}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def each(values: list[float], digits: int = 1) -> str:
    return ", ".join(num(v, digits) for v in values)


# --- one renderer per benchmark: (file name, data) pairs -> markdown ------------------------------------------


def stack_footprint(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# Stack footprint: one tenant's tracking server in each shape",
             "`bench/stack_footprint.py`: a private one-tenant embedded stack per shape and repeat; the tenant's "
             "tracking server is replaced by the shape's process (same environment, account, stores and login "
             "app). Memory is the whole process tree of the server: resident (RSS), and peak (summed VmHWM), idle "
             "and after an FL project logged through it. Medians over the repeats."]
    for name, data in datasets:
        shapes = list(data["summary"])
        parts.append(section(name, f"bench/stack_footprint.py --repeats {data['repeats']} --shapes {' '.join(shapes)}",
                             data))
        rows = []
        for shape in shapes:
            summary, runs, setting = data["summary"][shape], data["runs"][shape], data["shapes"][shape]
            rows.append([f"`{shape}`", str(setting["workers"]), "on" if setting["job_execution"] else "off",
                         str(summary["processes"]),
                         f"{num(summary['median_start_to_healthy_s'])} s ({each([r['start_to_healthy_s'] for r in runs])})",
                         f"{num(summary['median_idle_rss_mib'], 0)} MiB", f"{num(summary['median_after_fl_rss_mib'], 0)} MiB",
                         f"{num(summary['median_after_fl_peak_mib'], 0)} MiB", f"{num(summary['median_fl_project_s'])} s",
                         f"{num(median([r.get('ftp_rss_mib') for r in runs]), 0)} MiB"])
        parts.append(table(["shape", "workers", "job runner", "processes", "start to healthy `/health` (each run)",
                            "resident, idle", "resident after the FL project", "peak", "FL project",
                            "embedded FTP server, resident"], rows))
        if data.get("images"):
            parts.append("Image sizes when it ran (`docker image ls`): "
                         + ", ".join(f"`{image}` {size}" for image, size in sorted(data["images"].items())) + ".")
    return "\n\n".join(parts)


def fl_tracking_overhead(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# FL tracking overhead",
             "`bench/fl_tracking_overhead.py`: the same FL project (legacy Flower API, same seed) on a private "
             "embedded stack, with tracking off (only the best model kept on disk) and on (a run per round, the best "
             "model logged and registered), taking turns within one bench run. CPU: user and system seconds of the "
             "FL processes (aggregator and learners), the figure other people's load distorts least."]
    rows, machines = [], []
    for name, data in sorted(datasets, key=lambda item: item[1]["rounds"]):
        on = [r["last_round_to_registered_s"] for r in data["runs"]["on"]]
        m = data["machine"]
        rows.append([f"`{name}`", str(data["rounds"]), str(data["learners"]), str(data["repeats"]),
                     f"{load(m.get('load_average_at_start', [])[:1])} → {load(m.get('load_average_at_end', [])[:1])}",
                     f"{num(data['median_wall_s']['off'], 2)} s", f"{num(data['median_wall_s']['on'], 2)} s",
                     f"**{num(data['overhead_ratio_wall'], 2)}**",
                     f"**{num(data['median_last_round_to_registered_s'], 2)} s** ({each(on, 2)})",
                     f"{num(data['median_cpu_s']['off'])} → {num(data['median_cpu_s']['on'])}"])
        machines.append(f"- `{name}` ({data['date']}): {machine_line(m)}")
    parts.append(table(["data", "rounds", "learners", "repeats", "load average (1 min), start → end",
                        "median wall, untracked", "median wall, tracked", "ratio",
                        "last round → champion registered (median; each run)",
                        "CPU s of the FL processes, untracked → tracked"], rows))
    parts.append("Machines:\n\n" + "\n".join(machines))
    return "\n\n".join(parts)


FTP_WAYS = {"proxied": "proxied through the tracking server (pooled FTP connections)",
            "proxied_cold": "proxied, cold: right after `restart --tenant`",
            "archive": "one request: the archive route, as the model server fetches (READ on the model only)",
            "one_metadata_request": "one logged-in metadata call (experiments/get), no FTP",
            "raw_ftplib": "raw ftplib, one login",
            "ours_direct": "our FTPRepository.download_artifacts, in process",
            "mlflow_direct": "MLflow's FTPArtifactRepository, in process"}


FTP_MODELS = {"sklearn": "the test suite's scikit-learn model", "pytorch": "the PyTorch example's champion"}
PROFILE_PARTS = {"client_s": "the whole download, at the client",
                 "app": "whole requests in the server's app (our ASGI guards, MLflow's FastAPI and Flask apps)",
                 "mlflow_app": "of them: inside our ASGI guards (MLflow's FastAPI app)",
                 "login_check": "MLflow's Flask before_request: login and permission check (Flask routes only)",
                 "password_check": "password checks (the auth store's authenticate_user; Flask and FastAPI routes)",
                 "user_lookup": "user lookups (the auth store's get_user: is the user an admin?)",
                 "our_hooks": "our Flask before/after_request hooks",
                 "mlflow_hooks": "MLflow's other Flask hooks",
                 "handler": "MLflow's Flask artifact views",
                 "ftp": "FTP: our repository's list_artifacts and download_artifacts (Flask and FastAPI routes)",
                 "sql": "SQL statements (any store)"}


def ftp_models(result: dict) -> dict:
    """{model: {files, bytes, ways, profile}} of one store (JSON written before --models: the scikit-learn model)."""
    return {"sklearn": result} if "ways" in result else result


def ftp_download(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# FTP download: a model through the tracking server against raw ftplib, logins counted",
             "`bench/ftp_download.py`: a one-tenant stack per store, each model logged through the tracking server "
             "(the test suite's small scikit-learn model; the PyTorch example's champion, trained, logged and "
             "registered by a real `round --ml-repo examples/pytorch`), then downloaded each way by its logged "
             "model's URI; medians after a warm-up. FTP logins are counted in the store's own log, artifact HTTP "
             "requests in the tracking server's access log. A model's size is what the raw download brought."]
    for name, data in datasets:
        models = " ".join(data.get("models", []))
        parts.append(section(name, f"bench/ftp_download.py --repeats {data['repeats']}"
                                   + (f" --stores {' '.join(data['results'])} --models {models}" if models else ""),
                             data))
        rows, sizes, profiles = [], [], []
        for store, result in data["results"].items():
            for model, m in ftp_models(result).items():
                sizes.append(f"{store}, {FTP_MODELS.get(model, model)}: {m['files']} files"
                             + (f", {m['bytes']:,} bytes" if "bytes" in m else ""))
                for way, r in m["ways"].items():
                    rows.append([store, model, FTP_WAYS.get(way, way), f"{num(r['median_s'] * 1000)} ms",
                                 f"{num(r['min_s'] * 1000, 0)}-{num(r['max_s'] * 1000, 0)}",
                                 num(r["ratio_to_raw"], 2), num(r["logins"], 0),
                                 "-" if r.get("artifact_http_requests") is None
                                 else num(r["artifact_http_requests"], 0)])
                if "profile" in m:
                    profiles.append((store, model, m["profile"]))
        parts.append("Models: " + "; ".join(sizes) + ".\n\n" + table(
            ["store", "model", "way", "median", "min-max (ms)", "x raw", "FTP logins", "artifact HTTP requests"],
            rows))
        if profiles:
            parts.append("Where a proxied download spends its time: the tenant server's app (runner.create_app, same "
                         "environment and stores) built in a child process with its parts timed, served by uvicorn "
                         "in a thread, downloaded by MLflow's client in the same process; medians per download of "
                         "the time summed over its requests, and of the calls.")
            header = ["part"] + [f"{store}, {model}: ms (calls)" for store, model, _ in profiles]
            prows = []
            for part, label in PROFILE_PARTS.items():
                row = [label]
                for _, _, prof in profiles:
                    value = prof["median"].get(part)
                    if part == "client_s":
                        row.append(f"{num(value * 1000)}")
                    else:
                        row.append(f"{num(value['s'] * 1000)} ({num(value['calls'], 0)})" if value else "-")
                prows.append(row)
            parts.append(table(header, prows))
    return "\n\n".join(parts)


def serving(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# Serving: `flops-mlops serve` against `mlflow models serve`",
             "`bench/serving.py`: a one-tenant embedded stack runs an FL project; its champion is served one way, "
             "then the other, on the same machine. Latency: sequential `POST /invocations` over one keep-alive "
             "connection after a warm-up. Memory: resident memory of the server's whole process tree, idle after "
             "`/ping` answered and after the latency runs."]
    for name, data in datasets:
        requests = data.get("requests")
        parts.append(section(name, "bench/serving.py" + (f" --requests {requests}" if requests else ""), data))
        sizes = [(entry["rows"], entry["requests"], entry["body_bytes"]) for entry in data["servers"][0]["latency"]]
        rows = []
        for server in data["servers"]:
            row = [f"`{server['name']}`", str(server["memory_idle"]["processes"]), f"{num(server['start_to_ping_s'])} s",
                   f"{num(server['memory_idle']['rss_mib'], 0)} MiB",
                   f"{num(server['memory_after_load']['rss_mib'], 0)} MiB"]
            row += [f"{num(e['p50_ms'])} / {num(e['p95_ms'])} ms" for e in server["latency"]]
            rows.append(row)
        header = ["server", "processes", "start to `/ping`", "resident, idle", "resident after the runs"]
        header += [f"{r} row{'s' if r > 1 else ''}: p50 / p95 ({n} requests of {b} bytes)" for r, n, b in sizes]
        parts.append(table(header, rows))
    return "\n\n".join(parts)


def tracking_healthcheck(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# Tracking server at idle: what its healthcheck costs",
             "`bench/tracking_healthcheck.py`: the compose stack of `compose.yaml`, idle; the tracking-server "
             "container's CPU time over the window (Docker API, cumulative) and `docker stats` samples of its CPU %, "
             "with the healthcheck compose.yaml ships, with none, and with the Python healthcheck shipped before."]
    for name, data in datasets:
        parts.append(section(name, f"bench/tracking_healthcheck.py --seconds {num(data['seconds'], 0)} --settle "
                                   f"{num(data['settle_s'], 0)}", data))
        rows = []
        for variant, r in data["variants"].items():
            if "skipped" in r:
                rows.append([f"`{variant}`", "-", r["skipped"], "-", "-", "-", "-"])
                continue
            check = "none" if not r["healthcheck"] or r["healthcheck"] == ["NONE"] else \
                f"`{' '.join(r['healthcheck'][1:])}` every {num(r['healthcheck_interval_s'], 0)} s"
            rows.append([f"`{variant}`", f"`{r['image']}`", check,
                         f"{num(r['cpu_seconds'], 2)} s in {num(r['window_s'], 0)} s",
                         f"**{num(r['cpu_percent_of_one_core'], 2)} %**",
                         f"{num(r['docker_stats_cpu_percent_median'], 2)} % ({len(r['docker_stats_cpu_percent'])} "
                         f"samples: {each(r['docker_stats_cpu_percent'], 2)})",
                         f"{load(r['load_average_before'][:1])} → {load(r['load_average_after'][:1])}"])
        parts.append(table(["variant", "image", "healthcheck", "CPU time", "of one core", "`docker stats` CPU, median",
                            "load average (1 min)"], rows))
    return "\n\n".join(parts)


def fl_hierarchical(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# Classic and hierarchical FL side by side",
             "`bench/fl_hierarchical.py`: the same learners of the scikit-learn example (same seed, so the same "
             "non-IID split of the digits), tracking off. Classic: one aggregator, cycles x rounds rounds; "
             "hierarchical: a root over the cluster aggregators, each cycle running the rounds in every cluster, so "
             "every learner trains as often in both. Bytes to the root: the parameter arrays of the fit replies the "
             "root (classic: the aggregator) receives per cycle (a classic cycle is that many rounds). Accuracy: the "
             "best model's, on the digits no learner holds."]
    for name, data in datasets:
        rows = []
        for mode in ("classic", "hierarchical"):
            runs = data["runs"][mode]
            rows.append([mode, f"{num(data['median_wall_s'][mode], 2)} s ({each([r['wall_s'] for r in runs], 2)})",
                         f"{data['bytes_per_cycle'][mode]:,}", num(data["median_accuracy"][mode], 3),
                         num(data["median_final_loss"][mode], 4)])
        parts.append(f"{section(name, 'bench/fl_hierarchical.py', data)}\n\n{data['clusters']} clusters x "
                     f"{data['learners_per_cluster']} learners, {data['cycles']} cycles x {data['rounds']} rounds, "
                     f"{data['repeats']} runs of each mode, taking turns.")
        parts.append(table(["mode", "median wall (each run)", "bytes to the root per cycle",
                            "held-out accuracy (median)", "last aggregated loss (median)"], rows))
    return "\n\n".join(parts)


def fl_project(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# An FL project from an ML repository: the PyTorch example",
             "`bench/fl_project.py`: the PyTorch example (a copy with more local epochs, so rounds take seconds) on a "
             "private embedded stack, in the environment `round --ml-repo` builds for it, with tracking off (only the "
             "best model kept on disk) and on (a run per round, the best model logged with `mlflow.pytorch` and "
             "registered as champion), taking turns; then the last champion downloaded through the tracking server "
             "and with raw ftplib, medians after a warm-up, next to today's figure for the test suite's small "
             "scikit-learn model (`ftp_download.json`, embedded store)."]
    for name, data in datasets:
        parts.append(section(name, f"bench/fl_project.py --rounds {data['rounds']} --learners {data['learners']} "
                                   f"--repeats {data['repeats']} --epochs {data['epochs']}", data))
        on = [r["last_round_to_registered_s"] for r in data["runs"]["on"]]
        parts.append(f"Repository: {data['ml_repo']}; environment: {data['environment']}.")
        rounds = {mode: statistics.median(t for r in data["runs"][mode] for t in r["round_times_s"][1:])
                  for mode in ("off", "on")}
        parts.append(table(["rounds", "learners", "median round after the first, untracked → tracked",
                            "median wall, untracked", "median wall, tracked", "ratio",
                            "CPU s of the FL processes, untracked → tracked"],
                           [[str(data["rounds"]), str(data["learners"]),
                             f"{num(rounds['off'], 2)} → {num(rounds['on'], 2)} s",
                             f"{num(data['median_wall_s']['off'], 2)} s", f"{num(data['median_wall_s']['on'], 2)} s",
                             f"**{num(data['overhead_ratio_wall'], 3)}**",
                             f"{num(data['median_cpu_s']['off'])} → {num(data['median_cpu_s']['on'])}"]]))
        d = data["download"]
        parts.append(f"Last round → champion registered: **{num(data['median_last_round_to_registered_s'], 2)} s** "
                     f"median ({each(on, 2)}), for a model of **{d['model_bytes']:,} bytes** in {d['files']} files.")
        rows = [["PyTorch champion", way, f"{num(d[key]['median_s'] * 1000)} ms",
                 f"{num(d[key]['min_s'] * 1000, 0)}-{num(d[key]['max_s'] * 1000, 0)}",
                 num(d[key]["median_s"] / d["raw_ftplib"]["median_s"], 2), num(d[key]["artifact_http_requests"], 0)]
                for key, way in (("proxied", "proxied through the tracking server"),
                                 ("raw_ftplib", "raw ftplib, one login"),
                                 ("one_metadata_request", "one logged-in metadata call (experiments/get), no FTP"))
                if key in d]
        small = data.get("small_file_reference")
        if small:
            rows.append([f"scikit-learn model ({small['files']} files; `ftp_download.json`, {small['date']})",
                         "proxied through the tracking server", f"{num(small['proxied_ms'])} ms", "-",
                         num(small["ratio"], 2), num(small["artifact_http_requests"], 0)])
        parts.append(table(["model", "way", "median", "min-max (ms)", "x raw", "artifact HTTP requests"], rows))
        if data.get("images"):
            parts.append("Image sizes when it ran (`docker image ls`): "
                         + ", ".join(f"`{image}` {size}" for image, size in sorted(data["images"].items())) + ".")
    return "\n\n".join(parts)


def project_images(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# FL project images: the examples'",
             "`bench/project_images.py`: `flops-mlops build-fl-image` for each example of `examples/` (its repository, "
             "its dependencies and the FL runtime in one virtualenv, from a wheelhouse prepared here); the image's "
             "size as the engine reports it (base image included), the build's wall time and the heaviest packages "
             "of its virtualenv."]
    for name, data in datasets:
        parts.append(section(name, "bench/project_images.py", data))
        parts.append(f"Base image `{data['base_image']}`: {num(data['base_image_bytes'] / 1e6, 0)} MB. Build cache: "
                     f"{data['build_cache']}.")
        rows = [[f"examples/{i['example']}", f"`{i['image']}`", f"**{num(i['image_bytes'] / 1e6, 0)} MB**",
                 f"{num(i['build_s'], 0)} s",
                 ", ".join(f"{p['package']} {num(p['bytes'] / 1e6, 0)} MB" for p in i["heaviest_packages"])]
                for i in data["images"]]
        parts.append(table(["example", "image", "size", "build", "heaviest in its virtualenv"], rows))
    return "\n\n".join(parts)


def oci_images(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# Our images without Docker: size per platform",
             "`bench/oci_images.py`: `flops-mlops build-image NAME` for each of our images, both platforms in one "
             "build, as an OCI archive; per platform the layers' bytes as stored and sent (gzip) and unpacked (what "
             "a node's disk holds), read from the archive; the wall time of the whole build."]
    for name, data in datasets:
        parts.append(section(name, "bench/oci_images.py", data))
        parts.append(f"Platforms `{data['platforms']}`. Cache: {data['cache']}.")
        rows = []
        for image in data["images"]:
            goal = image.get("goal_unpacked_mb")
            for platform in image["platforms"]:
                unpacked = platform["unpacked_bytes"] / 1e6
                verdict = "-" if goal is None else (f"<= {goal} MB: " + ("met" if unpacked <= goal else "missed"))
                rows.append([f"`{image['image']}`", platform["platform"], f"**{num(unpacked, 0)} MB**",
                             f"{num(platform['gzip_bytes'] / 1e6, 0)} MB", verdict, f"{num(image['build_s'], 0)} s"])
        parts.append(table(["image", "platform", "unpacked", "gzip", "goal", "build (both platforms)"], rows))
        layer_rows = [[f"`{image['image']}`", platform["platform"], layer["what"],
                       f"{num(layer['unpacked_bytes'] / 1e6, 0)} MB"]
                      for image in data["images"] for platform in image["platforms"] for layer in platform["layers"]]
        parts.append(table(["image", "platform", "layer", "unpacked"], layer_rows))
    return "\n\n".join(parts)


TLS_FL = {"round_cli": "`flops-mlops round --json`, whole command",
          "tracked": "FL project in process, tracking on (run_project)",
          "untracked": "FL project in process, tracking off"}
TLS_DOWNLOADS = {"mlflow_client": "MLflow's client: `download_artifacts(models:/...)` through the tracking server",
                 "archive": "one request: the archive route, as the model server fetches (READ on the model only)",
                 "raw_ftp": "raw FTP (FTPS with PROT P when on), one login, straight from vsftpd"}


def tls_cost(datasets: list[tuple[str, dict]]) -> str:
    parts = ["# What TLS costs: FL tracking and the champion's download",
             "`bench/tls_cost.py`: a private one-tenant native stack (vsftpd, managed MySQL) with `tracking.tls`, "
             "`artifact_store.tls` and `backend_store.tls` all off, then all on (HTTPS, FTPS, MySQL TLS); in each, "
             "the default scikit-learn example (2 learners) through `flops-mlops round` and in process with tracking "
             "on and off, taking turns; then the last champion of `round` downloaded each way, medians after a "
             "warm-up. on/off: the TLS-on median over the TLS-off one."]
    for name, data in datasets:
        parts.append(section(name, f"bench/tls_cost.py --repeats {data['repeats']} --rounds {data['rounds']} "
                                   f"--downloads {data['downloads']}", data))
        off, on, ratios = data["settings"]["off"], data["settings"]["on"], data["ratios_on_off"]
        parts.append(f"{data['rounds']} rounds, {data['learners']} learners; runs of each way per setting: "
                     f"{data['repeats']}; stack up in {num(off['up_s'])} s (TLS off) and {num(on['up_s'])} s (TLS on); "
                     f"tracking URIs `{off['tracking_uri_scheme']}` and `{on['tracking_uri_scheme']}`.")

        def fl_cell(setting: dict, way: str) -> str:
            r = setting["fl"][way]
            return f"{num(r['median_s'], 2)} s ({each(r['times_s'], 2)}); round {num(r['median_round_s'], 3)} s"

        rows = [[label, fl_cell(off, way), fl_cell(on, way), f"**{num(ratios['fl'][way], 3)}**"]
                for way, label in TLS_FL.items()]
        rows.append(["overhead ratio: tracked / untracked", f"**{num(off['fl']['overhead_ratio'], 3)}**",
                     f"**{num(on['fl']['overhead_ratio'], 3)}**", num(ratios["fl"]["overhead_ratio"], 3)])
        parts.append("FL tracking overhead: median wall time (each run); median of the aggregator's per-round "
                     "times.")
        parts.append(table(["FL run", "TLS off", "TLS on", "on/off"], rows))
        d_off, d_on = off["download"], on["download"]

        def download_cell(r: dict) -> str:
            return f"{num(r['median_s'] * 1000)} ms ({num(r['min_s'] * 1000)}-{num(r['max_s'] * 1000)})"

        parts.append(f"Download of `{d_on['model_uri']}` ({d_on['files']} files, {d_on['bytes']:,} bytes): median "
                     f"(min-max) over {data['downloads']} downloads after a warm-up.")
        parts.append(table(["way", "TLS off", "TLS on", "on/off"],
                           [[label, download_cell(d_off[way]), download_cell(d_on[way]),
                             f"**{num(ratios['download'][way], 2)}**"] for way, label in TLS_DOWNLOADS.items()]))
    return "\n\n".join(parts)


RENDERERS: dict[str, Callable[[list[tuple[str, dict]]], str]] = {
    "stack_footprint": stack_footprint, "fl_tracking_overhead": fl_tracking_overhead,
    "ftp_download": ftp_download, "serving": serving, "tracking_healthcheck": tracking_healthcheck,
    "fl_hierarchical": fl_hierarchical, "fl_project": fl_project, "project_images": project_images,
    "oci_images": oci_images, "tls_cost": tls_cost}


# --- reports -----------------------------------------------------------------------------------------------------


def groups(results: Path) -> dict[str, list[tuple[str, dict]]]:
    """Benchmark -> its JSON files (name, data): <benchmark>.json first, then its variants by name."""
    found: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        found.setdefault(data.get("benchmark", path.stem), []).append((path.name, data))
    for benchmark, datasets in found.items():
        datasets.sort(key=lambda item: (item[0] != f"{benchmark}.json", item[0]))
    return found


def notes_of(text: str) -> str:
    """The hand-written section of an existing report (from the NOTES heading to the end), or ''."""
    return text[text.index(NOTES):].rstrip() + "\n" if NOTES in text else ""


def figures(text: str) -> set[str]:
    """The numbers a text states, outside `code` spans and link targets."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return set(NUMBER.findall(text))


def wrapped(markdown: str, width: int = 116) -> str:
    """Paragraphs and list items wrapped at ``width``; headings and tables as they are."""
    blocks = []
    for block in markdown.split("\n\n"):
        if block.startswith(("#", "|")):
            blocks.append(block)
        elif block.startswith("- ") or "\n- " in block:
            lines = block.split("\n")
            items = [textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False,
                                   break_on_hyphens=False) if line.startswith("- ") else line for line in lines]
            blocks.append("\n".join(items))
        else:
            blocks.append(textwrap.fill(block, width, break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(blocks)


def render(benchmark: str, datasets: list[tuple[str, dict]], notes: str) -> str:
    sources = ", ".join(name for name, _ in datasets)
    head = wrapped(f"<!-- Generated by bench/report.py from {sources}: rerun it after the benchmark, do not edit; "
                   "only the Notes section at the end is written by hand. -->")
    return head + "\n\n" + wrapped(RENDERERS[benchmark](datasets).rstrip()) + "\n" + ("\n" + notes if notes else "")


def problems(results: Path, write: bool) -> list[str]:
    found = []
    for benchmark, datasets in groups(results).items():
        if benchmark not in RENDERERS:
            found.append(f"{', '.join(n for n, _ in datasets)}: no renderer for benchmark {benchmark!r} in "
                         "bench/report.py")
            continue
        path = results / f"{benchmark}.md"
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        notes = notes_of(existing)
        text = render(benchmark, datasets, notes)
        stated = figures(notes) - figures(text[: len(text) - len(notes)] if notes else text)
        if stated:
            found.append(f"{path.name}: the notes state {', '.join(sorted(stated, key=float))}, which the JSON "
                         "does not give (the notes may only repeat figures of the generated part)")
        if write:
            if text != existing:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
        elif text != existing:
            diff = "".join(list(difflib.unified_diff(existing.splitlines(True), text.splitlines(True), str(path),
                                                     "rendered from the JSON"))[:40])
            found.append(f"{path.name} differs from what its JSON renders (run bench/report.py):\n{diff}")
    for path in sorted(results.glob("*.md")):
        if path.stem not in RENDERERS or not any(path.stem == b for b in groups(results)):
            found.append(f"{path.name}: no JSON renders it")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a report differs from its JSON or its notes state a "
                             "figure the JSON lacks")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON files and reports")
    args = parser.parse_args(argv)
    found = problems(args.results, write=not args.check)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
