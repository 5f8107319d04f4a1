"""Clip loading speed per video backend, and a check that every backend gives the same frames.

    python -m benchmarks.clip_loading --root outputs/demo/dataset

Without --root, collects a 20-episode Lift dataset into a temporary folder first. One process,
no DataLoader workers: the figure is per core.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._report import command, write_section
from data.clips import ClipConfig, ClipDataset
from data.video import VIDEO_BACKENDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.root
    if root is None:
        from data.collect import CollectConfig, collect, quiet_writers

        quiet_writers()
        root = collect(CollectConfig(task="lift", episodes=20, root=Path(tempfile.mkdtemp()) / "lift"))
    cfg = dict(context=4, horizon=8, stride=2)
    datasets = {b: ClipDataset(root=root, config=ClipConfig(video_backend=b, **cfg)) for b in VIDEO_BACKENDS}
    n = len(datasets["pyav"])
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.clips].tolist()
    reference = [datasets["pyav"][i] for i in idx[:20]]
    rows = ["| backend | clips/s | ms per clip | frames identical to pyav |", "|---|---|---|---|"]
    for backend, ds in datasets.items():
        try:
            ds[idx[0]]
        except ImportError as e:  # torchcodec without FFmpeg's shared libraries
            rows.append(f"| {backend} | unavailable: {str(e).splitlines()[0][:80]} | | |")
            print(rows[-1], flush=True)
            continue
        same = all(torch.equal(ds[i]["future"], r["future"]) and torch.equal(ds[i]["context"], r["context"])
                   for i, r in zip(idx[:20], reference))
        t0 = time.perf_counter()
        for i in idx:
            ds[i]
        per = (time.perf_counter() - t0) / len(idx)
        rows.append(f"| {backend} | {1 / per:.0f} | {1000 * per:.1f} | {'yes' if same else 'NO'} |")
        print(rows[-1], flush=True)
    v = len(datasets["pyav"].views)
    body = (f"{args.clips} random clips of {n} ({len(datasets['pyav'].episodes)} episodes), each {v} views x "
            f"({cfg['context']} context + {cfg['horizon'] // cfg['stride']} future) 64x64 frames, action chunk "
            f"{cfg['horizon']}, stride {cfg['stride']}; one process, no DataLoader workers.\n\n" + "\n".join(rows))
    if not args.no_write:
        write_section("Clip loading", command(), body)


if __name__ == "__main__":
    main()
