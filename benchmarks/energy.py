"""Energy of a timed phase: GPU board power (nvidia-smi) and CPU package counters (RAPL).

Why: users and cluster admins ask what a cohort costs in kWh, and the benchmarks measured
only time and memory. What is measured, and what is left out:

- GPU: board power as the driver reports it (`power.draw`), sampled by
  ``nvidia-smi --query-gpu=timestamp,index,uuid,power.draw --loop-ms=100`` in the background and
  integrated over the phase, for the GPU(s) the phase used only. Not wall-plug power: the
  CPU, DRAM, disks, fans, power supply losses and cooling are outside it.
- CPU: the Linux powercap RAPL counters (``/sys/class/powercap/*/energy_uj``, Intel and, on
  bare metal, AMD), package zones (and their DRAM sub-zones where present), read at the
  start and end and every few seconds between so a counter wrapping at
  ``max_energy_range_uj`` is counted. A package counter covers the whole socket, other
  processes included.

Where a number cannot be measured the record says ``"measured": false`` and why; no
estimate is ever put in its place. Carbon is only kWh x a grid intensity the user gives.
Standard library only, so that every benchmark script can import it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

#: Where the kernel exposes RAPL (a module constant so that tests can point it at a fake tree).
POWERCAP = Path("/sys/class/powercap")
#: Joules in a kWh.
J_PER_KWH = 3.6e6
#: Samples must span at least this share of the phase, else the phase is "not measured".
MIN_COVERAGE = 0.5


def not_measured(reason: str, **extra: Any) -> dict[str, Any]:
    return {"measured": False, "reason": reason, **extra}


# --------------------------------------------------------------------------- integration


def integrate(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Joules of power ``samples`` ((time s, watts), any order) over [start, end].

    Trapezoids between the samples inside the window, the power interpolated linearly at its
    edges where a sample lies on the far side; where none does (the sampler starting after the
    phase began, or its last sample before the end), the span the samples cover gives the mean
    power, held over the uncovered rest. The record says how much of the phase was covered;
    under `MIN_COVERAGE`, or with fewer than two samples, it is "not measured"."""
    seconds = end - start
    pts = sorted(samples)
    if seconds <= 0:
        return not_measured("the phase has no duration")

    def between(p: tuple[float, float], q: tuple[float, float], t: float) -> float:
        return p[1] + (q[1] - p[1]) * (t - p[0]) / (q[0] - p[0])

    inside = [(t, w) for t, w in pts if start <= t <= end]
    before = [(t, w) for t, w in pts if t < start]
    after = [(t, w) for t, w in pts if t > end]
    curve = list(inside)
    if before and (inside or after):
        curve.insert(0, (start, between(before[-1], (inside or after)[0], start)))
    if after and (inside or before):
        curve.append((end, between((inside or before)[-1], after[0], end)))
    if len(curve) < 2:
        return not_measured(f"fewer than 2 power samples in the {seconds:.2f} s phase")
    covered = curve[-1][0] - curve[0][0]
    if covered < MIN_COVERAGE * seconds:
        return not_measured(
            f"power samples cover {covered:.2f} s of the {seconds:.2f} s phase",
            samples=len(inside),
        )
    joules = sum(
        (t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(curve, curve[1:], strict=False)
    )
    mean_watts = joules / covered
    return {
        "measured": True,
        "joules": mean_watts * seconds,
        "mean_watts": mean_watts,
        "seconds": seconds,
        "covered_seconds": covered,
        "samples": len(inside),
        # the sampling interval nvidia-smi kept (it may lag the one asked for)
        "median_interval_ms": statistics.median(
            1e3 * (b[0] - a[0]) for a, b in zip(inside, inside[1:], strict=False)
        )
        if len(inside) > 1
        else None,
    }


def per_work(
    energy: dict[str, Any],
    slides: float | None,
    patches: float | None = None,
    grid_gco2_per_kwh: float | None = None,
) -> dict[str, Any]:
    """``energy`` with J/slide, J/patch and kWh per 1000 slides at the phase's own rate (and
    gCO2 for them, only from a grid intensity the user gave)."""
    if not energy.get("measured"):
        return energy
    out = dict(energy)
    joules = energy["joules"]
    if slides:
        out["joules_per_slide"] = joules / slides
        out["kwh_per_1000_slides"] = joules / slides * 1000 / J_PER_KWH
    if patches:
        out["joules_per_patch"] = joules / patches
    if grid_gco2_per_kwh is not None:
        out["grid_gco2_per_kwh"] = grid_gco2_per_kwh
        out["gco2"] = joules / J_PER_KWH * grid_gco2_per_kwh
        if slides:
            out["kg_co2_per_1000_slides"] = out["kwh_per_1000_slides"] * grid_gco2_per_kwh / 1e3
    return out


# --------------------------------------------------------------------------- GPU


def parse_smi(text: str, gpus: list[str]) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """(gpu -> [(epoch seconds, watts)], unreadable lines) from nvidia-smi's CSV lines
    ``timestamp, index, uuid, power.draw``, kept for ``gpus`` (an index or a UUID each)."""
    out: dict[str, list[tuple[float, float]]] = {g: [] for g in gpus}
    bad = 0
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            bad += bool(line.strip())
            continue
        stamp, index, uuid, watts = parts
        gpu = next((g for g in gpus if g in (index, uuid)), None)
        if gpu is None:
            continue
        try:
            when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out[gpu].append((when, float(watts)))
        except ValueError:  # "[N/A]", "[Not Supported]", a torn line
            bad += 1
    return out, bad


class GpuPower:
    """Board power of ``gpus`` (nvidia-smi indices or UUIDs) sampled every ``interval_ms``
    between `start` and `stop`. Timestamps are the driver's (``timestamp`` field), so the
    integral does not depend on when nvidia-smi flushes its output; the output goes to a
    file, never a pipe that could fill up and stall it."""

    def __init__(self, gpus: list[str], interval_ms: int = 100) -> None:
        self.gpus = [str(g) for g in gpus]
        self.interval_ms = interval_ms
        self.smi = shutil.which("nvidia-smi")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self.reason: str | None = None
        if not self.gpus:
            self.reason = "no GPU used by this phase"
        elif self.smi is None:
            self.reason = "nvidia-smi not found on PATH"

    def start(self) -> GpuPower:
        self.t0 = time.time()
        if self.reason:
            return self
        handle, name = tempfile.mkstemp(prefix="zoommil-power-", suffix=".csv")
        self._log = Path(name)
        # every GPU's lines (not --id): `parse_smi` keeps the phase's, by index or UUID
        cmd = [
            self.smi, "--query-gpu=timestamp,index,uuid,power.draw",
            "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}",
        ]  # fmt: skip
        with os.fdopen(handle, "wb") as out:
            try:
                self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
            except OSError as error:
                self.reason = f"nvidia-smi could not start ({error.strerror})"
        return self

    def stop(self) -> dict[str, Any]:
        """The phase's energy: per GPU and summed, or "not measured" with the reason."""
        t1 = time.time()
        text = ""
        if self._proc is not None:
            if not _end(self._proc):
                self.reason = (
                    f"nvidia-smi (pid {self._proc.pid}) did not exit when stopped, not even "
                    "killed (a hung driver?); left behind, its samples not used"
                )
            self._proc = None
        if self._log is not None:
            text = self._log.read_text(errors="replace")
            self._log.unlink(missing_ok=True)
            self._log = None
        base = {"source": "nvidia-smi power.draw (board power)", "gpus": self.gpus,
                "interval_ms": self.interval_ms}  # fmt: skip
        if self.reason:
            return {**base, **not_measured(self.reason)}
        series, bad = parse_smi(text, self.gpus)
        per_gpu = {g: integrate(s, self.t0, t1) for g, s in series.items()}
        missing = [g for g, r in per_gpu.items() if not r["measured"]]
        if missing:
            why = "; ".join(f"GPU {g}: {per_gpu[g]['reason']}" for g in missing)
            if bad:
                why += f" ({bad} unreadable line(s), e.g. power.draw [N/A])"
            return {**base, **not_measured(why), "per_gpu": per_gpu}
        return {
            **base,
            "measured": True,
            "joules": sum(r["joules"] for r in per_gpu.values()),
            "mean_watts": sum(r["mean_watts"] for r in per_gpu.values()),
            "seconds": t1 - self.t0,
            "samples": sum(r["samples"] for r in per_gpu.values()),
            "per_gpu": per_gpu,
        }


def _end(proc: subprocess.Popen[bytes], seconds: float = 5.0) -> bool:
    """Stop the sampler: SIGINT (as Ctrl-C: nvidia-smi flushes and exits), then SIGKILL;
    False if it is still there after both. Why bounded: an nvidia-smi stuck in the driver
    (uninterruptible) outlives SIGKILL, and an unbounded wait hung the whole gpu.sh run for
    a number that is optional."""
    for stop in (lambda: proc.send_signal(signal.SIGINT), proc.kill):
        try:
            stop()
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            continue
        except OSError:  # already gone
            return True
    return False


# --------------------------------------------------------------------------- CPU (RAPL)


def rapl_zones(root: Path | None = None) -> tuple[list[Path], str | None]:
    """The package zones and their DRAM sub-zones under ``root``, or the reason there are
    none readable. The ``-mmio`` zones repeat the package's counter and sub-zones other than
    DRAM (core, uncore) are inside it, so they are left out not to count twice."""
    root = POWERCAP if root is None else root
    # sysfs lists every zone flat (intel-rapl:0, intel-rapl:0:1, intel-rapl-mmio:0, ...)
    tops = sorted(p for p in root.glob("*rapl:*") if re.fullmatch(r"[a-z-]*rapl:\d+", p.name))
    zones = []
    for top in tops:
        zones.append(top)
        for sub in sorted(top.glob(f"{top.name}:*")):
            if _read(sub / "name") == "dram":
                zones.append(sub)
    if not zones:
        return [], "no RAPL counters readable (no powercap RAPL zone on this machine)"
    unreadable = [z for z in zones if _counter(z) is None]
    if unreadable:
        return [], (
            f"no RAPL counters readable ({unreadable[0] / 'energy_uj'} exists but cannot be "
            "read; on most kernels only root can)"
        )
    return zones, None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _counter(zone: Path) -> int | None:
    text = _read(zone / "energy_uj")
    return int(text) if text and text.isdigit() else None


class Rapl:
    """CPU energy between `start` and `stop` from the RAPL counters, read every
    ``poll_seconds`` between so that a wrap-around (a 262 kJ range wraps after ~22 min at
    200 W) is never missed, however long the phase."""

    def __init__(self, root: Path | None = None, poll_seconds: float = 5.0) -> None:
        self.zones, self.reason = rapl_zones(root)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Rapl:
        self.t0 = time.time()
        self.total = {z: 0 for z in self.zones}
        self.max = {z: int(_read(z / "max_energy_range_uj") or 0) for z in self.zones}
        self.last = {z: _counter(z) for z in self.zones}
        # a counter unreadable at some read, or one that went back without a known range:
        # energy was missed, so the phase is "not measured" rather than undercounted
        self.gaps = [z for z, v in self.last.items() if v is None]
        if self.zones and self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.read()

    def read(self) -> None:
        """Add each counter's advance since the last read (one wrap allowed between reads)."""
        with self._lock:
            for zone in self.zones:
                now, last = _counter(zone), self.last[zone]
                if now is None or last is None:
                    self.gaps += [zone] if zone not in self.gaps else []
                    self.last[zone] = now
                    continue
                delta = now - last
                if delta < 0 and self.max[zone] <= 0 and zone not in self.gaps:
                    self.gaps.append(zone)  # wrapped, with no max_energy_range_uj to add
                if delta < 0:
                    delta += self.max[zone]
                self.total[zone] += delta
                self.last[zone] = now

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        base = {"source": "RAPL (powercap energy_uj): CPU package, DRAM where listed"}
        if self.reason:
            return {**base, **not_measured(self.reason)}
        self.read()
        if self.gaps:
            zone = self.gaps[0]
            return {**base, **not_measured(
                f"{zone / 'energy_uj'} could not be read at some point of the phase, or wrapped "
                "without a max_energy_range_uj: its energy is not known"
            )}  # fmt: skip
        seconds = time.time() - self.t0
        zones = {f"{z.name} ({_read(z / 'name')})": self.total[z] / 1e6 for z in self.zones}
        joules = sum(zones.values())
        watts = joules / seconds if seconds > 0 else None
        return {**base, "measured": True, "joules": joules, "seconds": seconds,
                "mean_watts": watts, "zones": zones}  # fmt: skip


def total(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one phase as one record (their joules and seconds summed), or the first
    run's "not measured" where any is."""
    missing = [r for r in records if not r.get("measured")]
    if missing or not records:
        return missing[0] if missing else not_measured("no run measured")
    joules, seconds = sum(r["joules"] for r in records), sum(r["seconds"] for r in records)
    return {"source": records[0].get("source"), "measured": True, "joules": joules,
            "seconds": seconds, "mean_watts": joules / seconds if seconds > 0 else None,
            "runs": len(records)}  # fmt: skip


def describe(energy: dict[str, Any]) -> str:
    """One line for a report: the energy and its rates, or "not measured (why)"."""
    if not energy.get("measured"):
        return f"not measured ({energy.get('reason', 'unknown reason')})"
    parts = [f"{energy['joules']:.1f} J over {energy['seconds']:.1f} s"]
    if "mean_watts" in energy and energy["mean_watts"] is not None:
        parts.append(f"mean {energy['mean_watts']:.1f} W")
    if "joules_per_slide" in energy:
        parts.append(f"{energy['joules_per_slide']:.1f} J/slide")
        parts.append(f"{energy['kwh_per_1000_slides']:.4f} kWh per 1000 slides")
    if "joules_per_patch" in energy:
        parts.append(f"{energy['joules_per_patch']:.3f} J/patch")
    if "kg_co2_per_1000_slides" in energy:
        parts.append(
            f"{energy['kg_co2_per_1000_slides']:.4f} kg CO2 per 1000 slides at "
            f"{energy['grid_gco2_per_kwh']:g} g/kWh"
        )
    return ", ".join(parts)
