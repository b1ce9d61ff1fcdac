"""`dla play RUN`: episodes of a run's greedy policy rendered headless into an animated GIF (Pillow).

The env renders with `render_mode="rgb_array"` (no display); every `every`-th frame is kept, halved,
with the episode and its running return written in the corner. The GIF is written to a temporary file
beside its destination and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dla.errors import DlaError
from dla.io import atomic_write
from dla.rl.envs import greedy, make_envs, to_tensor


def play(run_path: str | Path, episodes: int = 1, out: Path | None = None, seed: int = 2_000_000, every: int = 2,
         scale: float = 0.5) -> tuple[Path, list[float]]:
    """Render `episodes` seeded episodes of the run's best policy; returns the GIF's path and the returns."""
    from PIL import Image, ImageDraw

    from dla.build import load_run_model, open_run

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen: no display, no warnings
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    if out is not None and not out.parent.is_dir():  # before the run is read
        raise DlaError(f"--out {out}: folder {out.parent} does not exist")
    if out is not None and out.suffix.lower() != ".gif":
        raise DlaError(f"--out {out}: an animated GIF is written; give a .gif file")
    run, _ = open_run(run_path, "dla play")
    model, cfg = load_run_model(run)
    policy = greedy(model)
    out = out or run.plots / "play.gif"
    frames, returns = [], []
    envs = make_envs(cfg.data, 1, render=True)
    try:
        for episode in range(episodes):
            obs, _ = envs.reset(seed=seed + episode)
            total, step, done = 0.0, 0, False
            while not done:
                last = envs.render()[0]  # the frame before this step (after the last step: the final one)
                if step % every == 0:
                    frames.append(_frame(last, f"episode {episode + 1}  return {total:.0f}", scale, Image, ImageDraw))
                with torch.inference_mode():
                    action = policy(to_tensor(obs)).numpy()
                obs, reward, terminated, truncated, _ = envs.step(action)
                total += float(reward[0])
                step += 1
                done = bool(terminated[0] or truncated[0])
            frames.append(_frame(last, f"episode {episode + 1}  return {total:.0f}", scale, Image, ImageDraw))
            returns.append(total)
    finally:
        envs.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                 duration=40 * every, loop=0))
    if out.resolve() == (run.plots / "play.gif").resolve():  # the run's own: shown by dla report
        from dla.manifest import PLOTS_TITLE, write_manifest

        write_manifest(run.plots, "plots", PLOTS_TITLE, [{"file": "play.gif", "caption": f"dla play: {len(returns)} "
                       f"greedy episode(s), returns {', '.join(f'{r:.0f}' for r in returns)}"}])
    return out, returns


def _frame(rgb, text: str, scale: float, Image, ImageDraw):
    image = Image.fromarray(np.asarray(rgb))
    if scale != 1:
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 8 + 6 * len(text), 14), fill=(255, 255, 255))
    draw.text((4, 2), text, fill=(0, 0, 0))
    return image.convert("P", palette=Image.ADAPTIVE)
