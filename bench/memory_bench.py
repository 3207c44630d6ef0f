"""(f) Memory: peak RSS of a process holding the dashboard's resources with the large reference set."""

from __future__ import annotations

from pathlib import Path

from .env import BenchEnv
from .subproc import run_probe


def run(env: BenchEnv, query_files: list[bytes], matches: int, explorer: bool = True) -> dict:
    """The app's peak RSS (with the explorer's matrix of every vector unless not `explorer`), and PostgreSQL's
    memory: the PSS of the bench server's processes (shared buffers counted once)."""
    query_dir = env.root / "memory-queries"
    query_dir.mkdir(exist_ok=True)
    for i, data in enumerate(query_files):
        (query_dir / f"q{i:03d}.png").write_bytes(data)
    s = env.settings
    probe_env = {"RAIOX_DATA_DIR": str(s.data_dir), "RAIOX_DATABASE_URL": s.database_url,
                 "RAIOX_MODEL": s.model, "RAIOX_PRETRAINED": s.pretrained, "RAIOX_DEVICE": s.device,
                 "RAIOX_STORAGE_URL": ""}
    _, result = run_probe("bench.memory_probe", [str(query_dir), str(matches)] + ([] if explorer else ["no-explorer"]),
                          probe_env, timeout_s=1800)
    result["postgres_pss_mb"] = postgres_pss_mb(env.server)
    result["text_tower_mb"] = text_tower_mb(s.model)
    result["method"] = ("a subprocess mimicking the app's resources (settings, pool, storage, model), importing "
                        "streamlit/plotly/pandas, running matches, then loading the explorer's vector matrix; "
                        "VmHWM from /proc/self/status")
    return result


def text_tower_mb(model: str) -> float:
    """fp32 size of the text tower that load_embedder drops (built on the meta device: nothing allocated)."""
    import open_clip
    import torch

    with torch.device("meta"):
        clip = open_clip.create_model(model, pretrained=None, device="meta")
    params = sum(p.numel() for name, p in clip.named_parameters() if not name.startswith("visual."))
    return round(params * 4 / 2**20, 1)


def postgres_pss_mb(server) -> float | None:
    """Proportional set size of the embedded server's postmaster and its children, in MB (None if unreadable)."""
    try:
        postmaster = int(server.get_pid())
        pids = [postmaster] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                               and _ppid(p) == postmaster]
        return round(sum(_pss_kb(pid) for pid in pids) / 1024, 1)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
