"""Per-process torch set-up shared by training, prediction and the worker: which device to use and how
many CPU threads torch may take."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device named by a setting; None or "auto" = CUDA if available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def configure_torch(threads: int) -> None:
    """Limit torch's intra-op CPU threads for this process; 0 keeps torch's default. Safe to call
    from every job or model load: it only acts when the count differs."""
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
