"""(f) Memory: peak RSS of a process holding the dashboard's resources with the large reference set."""

from __future__ import annotations

from .env import BenchEnv
from .subproc import run_probe


def run(env: BenchEnv, query_files: list[bytes], matches: int) -> dict:
    query_dir = env.root / "memory-queries"
    query_dir.mkdir(exist_ok=True)
    for i, data in enumerate(query_files):
        (query_dir / f"q{i:03d}.png").write_bytes(data)
    s = env.settings
    probe_env = {"RAIOX_DATA_DIR": str(s.data_dir), "RAIOX_DATABASE_URL": s.database_url,
                 "RAIOX_MODEL": s.model, "RAIOX_PRETRAINED": s.pretrained, "RAIOX_DEVICE": s.device,
                 "RAIOX_STORAGE_URL": ""}
    _, result = run_probe("bench.memory_probe", [str(query_dir), str(matches)], probe_env, timeout_s=600)
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
