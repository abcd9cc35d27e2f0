"""The synthetic video task: moving coloured shapes (and drawn-in words), questions of all five problem types.

Every row keeps the generator's facts in ``extra["facts"]`` (what the observation must state for the answer to
follow), which the rule-based judge stand-in uses. The CoT rows' observation states exactly those facts, in the
paper's format ("Based on the question, I need to notice ..."). Deterministic given the seed.

Two styles. ``varied`` (the default): several small shapes, shuffled options; a test of the data path, but the
tiny model does not learn its video questions. ``demo``: what a tiny model measurably learns from the video on 2
cores (../shared/ENVIRONMENT.md, "Can a tiny model learn the synthetic task"): one large shape (radius size/6)
crossing 70% of the frame, direction options always in the order left, right, up, down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videoqa.schema import Sample, write_json, write_parquet

COLORS = {  # RGB
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
    "white": (235, 235, 235),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
START_WORD = {"left": "right", "right": "left", "up": "bottom", "down": "top"}  # where a mover starts
END_WORD = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
WORDS = ("CAT", "DOG", "SUN", "MAP", "BOX", "RED", "TOP", "ZIP")
TASKS = ("multiple choice", "numerical", "OCR", "free-form", "regression")
STYLES = ("varied", "demo")
BACKGROUND = (30, 30, 30)
DEMO_TRAVEL = 70  # percent of the frame the demo's direction movers cross


@dataclass
class Mover:
    color: str
    shape: str
    x: float  # centre at frame 0, pixels
    y: float
    dx: float  # pixels per frame
    dy: float
    r: int | None = None  # half-size in pixels; None: the varied style's size // 14

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    movers: list[Mover]
    text: str | None = None
    text_scale: float = 1.0  # relative to the varied style's lettering


def _draw(scene: Scene, t: int, size: int) -> np.ndarray:
    import cv2

    img = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    for m in scene.movers:
        r = m.r or size // 14
        cx, cy = int(round(m.x + m.dx * t)), int(round(m.y + m.dy * t))
        color = COLORS[m.color]
        if m.shape == "square":
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        elif m.shape == "circle":
            cv2.circle(img, (cx, cy), r, color, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], dtype=np.int32)
            cv2.fillPoly(img, [pts], color)
    if scene.text:
        scale = size / 112 * scene.text_scale
        (tw, th), _ = cv2.getTextSize(scene.text, cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, max(1, int(3 * scale)))
        org = ((size - tw) // 2, (size + th) // 2)
        cv2.putText(
            img, scene.text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, (255, 255, 255), max(1, int(3 * scale))
        )
    return img


def render_clip(scene: Scene, frames: int, size: int) -> np.ndarray:
    """The scene's frames in memory, (frames, size, size, 3) RGB uint8: what ``write_video`` encodes."""
    return np.stack([_draw(scene, t, size) for t in range(frames)])


def write_video(scene: Scene, path: Path, frames: int, size: int, fps: float) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v codec missing?)")
    for t in range(frames):
        writer.write(_draw(scene, t, size)[:, :, ::-1])  # OpenCV wants BGR
    writer.release()


class SyntheticTask:
    """Draws scenes and writes rows. ``frames`` per video at ``fps``; square frames of ``size`` pixels; ``style``
    is ``varied`` or ``demo`` (see the module docstring)."""

    def __init__(
        self,
        seed: int,
        frames: int = 16,
        size: int = 112,
        fps: float = 8.0,
        image_fraction: float = 0.1,
        style: str = "varied",
    ):
        if style not in STYLES:
            raise ValueError(f"unknown synthetic style {style!r} (one of {', '.join(STYLES)})")
        self.rng = np.random.default_rng(seed)
        self.frames, self.size, self.fps, self.image_fraction = frames, size, fps, image_fraction
        self.style = style
        self.demo = style == "demo"

    # -- scene pieces -------------------------------------------------------------------------------------
    def _pick_objects(self, n: int) -> list[tuple[str, str]]:
        colors = self.rng.permutation(list(COLORS))[:n]
        return [(str(c), str(self.rng.choice(SHAPES))) for c in colors]

    def _mover(self, color: str, shape: str, direction: str, travel_pct: int, r: int | None = None) -> Mover:
        """A shape crossing ``travel_pct`` percent of the frame in ``direction`` over the clip."""
        s, margin = self.size, self.size // 8
        dist = travel_pct / 100 * s
        ux, uy = DIRECTIONS[direction]
        along_start = self.rng.uniform(margin, s - margin - dist)  # position on the moving axis, low end
        across = self.rng.uniform(max(margin, r or 0), s - max(margin, r or 0))  # a large shape stays in frame
        if ux:
            x0 = along_start if ux > 0 else along_start + dist
            return Mover(color, shape, x0, across, ux * dist / (self.frames - 1), 0.0, r)
        y0 = along_start if uy > 0 else along_start + dist
        return Mover(color, shape, across, y0, 0.0, uy * dist / (self.frames - 1), r)

    def _big_mover(self, travel_pct: int) -> Mover:
        """The demo style's single large shape, in a random direction."""
        ((color, shape),) = self._pick_objects(1)
        direction = str(self.rng.choice(list(DIRECTIONS)))
        return self._mover(color, shape, direction, travel_pct, r=self.size // 6)

    def _static(self, color: str, shape: str) -> Mover:
        m = self.size // 8
        return Mover(color, shape, self.rng.uniform(m, self.size - m), self.rng.uniform(m, self.size - m), 0.0, 0.0)

    def _movers(self, objects: list[tuple[str, str]], travel_pct: int | None = None) -> list[Mover]:
        dirs = self.rng.permutation(list(DIRECTIONS))
        return [
            self._mover(c, s, str(dirs[i % 4]), travel_pct or int(self.rng.choice([40, 50, 60])))
            for i, (c, s) in enumerate(objects)
        ]

    # -- the five question kinds ----------------------------------------------------------------------------
    def direction_mc(self) -> tuple[Scene, dict]:
        if self.demo:  # one large mover; fixed options, so the letter maps to one direction in every row
            movers, order = [self._big_mover(DEMO_TRAVEL)], list(DIRECTIONS)
        else:
            movers = self._movers(self._pick_objects(int(self.rng.integers(1, 4))))
            order = [str(d) for d in self.rng.permutation(list(DIRECTIONS))]
        target = movers[0]
        direction = next(d for d, v in DIRECTIONS.items() if v == (int(np.sign(target.dx)), int(np.sign(target.dy))))
        letters = "ABCD"
        options = [f"{letters[i]}. {d}" for i, d in enumerate(order)]
        answer = letters[order.index(direction)]
        start, end = START_WORD[direction], END_WORD[direction]
        return Scene(movers), dict(
            problem=f"Which direction does the {target.name} move?",
            options=options,
            answer=answer,
            facts={"kind": "direction", "target": target.name, "start": start, "end": end, "direction": direction},
            observation=f"Based on the question, I need to notice where the {target.name} starts and ends. "
            f"The {target.name} starts near the {start} and ends near the {end} of the frame.",
            think=f"Based on the observations, the {target.name} moves from the {start} to the {end}, so it moves "
            f"{direction}. Option {answer} is {direction}.",
        )

    def count_numerical(self) -> tuple[Scene, dict]:
        shape = str(self.rng.choice(SHAPES))
        count = int(self.rng.integers(1, 5))
        colors = [str(c) for c in self.rng.permutation(list(COLORS))]
        movers = [self._static(colors[i], shape) for i in range(count)]
        others = [s for s in SHAPES if s != shape]
        for i in range(int(self.rng.integers(0, 5 - count + 1))):  # distractors of other shapes
            movers.append(self._static(colors[(count + i) % len(colors)], str(self.rng.choice(others))))
        named = ", ".join(f"a {m.color} one" for m in movers[:count])
        return Scene(movers), dict(
            problem=f"How many {shape}s are in the video?",
            answer=str(count),
            facts={"kind": "count", "shape": shape, "count": count},
            observation=f"Based on the question, I need to notice every {shape}. "
            f"There {'is' if count == 1 else 'are'} {count} {shape}{'' if count == 1 else 's'}: {named}.",
            think=f"Based on the observations, I count {count} {shape}{'' if count == 1 else 's'}, so the answer "
            f"is {count}.",
        )

    def read_text_ocr(self) -> tuple[Scene, dict]:
        word = str(self.rng.choice(WORDS))
        if self.demo:  # the word alone and larger: still legible after the loader's downscaling
            scene = Scene([], text=word, text_scale=1.4)
        else:
            scene = Scene(self._movers(self._pick_objects(int(self.rng.integers(0, 2)))), text=word)
        return scene, dict(
            problem="What word is written in the video?",
            answer=word,
            facts={"kind": "text", "text": word},
            observation=f"Based on the question, I need to notice the text in the video. "
            f"The word written in the middle of the frame is {word}.",
            think=f"Based on the observations, the word is {word}.",
        )

    def describe_free_form(self) -> tuple[Scene, dict]:
        scene, d = self.direction_mc()
        f = d["facts"]
        answer = f"The {f['target']} moves {f['direction']}."
        return scene, dict(
            problem=f"Describe how the {f['target']} moves.",
            answer=answer,
            facts=f,
            observation=d["observation"],
            think=f"Based on the observations, the {f['target']} moves from the {f['start']} to the {f['end']}.",
        )

    def travel_regression(self) -> tuple[Scene, dict]:
        pct = int(self.rng.choice([20, 30, 40, 50, 60, 70]))
        if self.demo:
            movers = [self._big_mover(pct)]
        else:
            movers = self._movers(self._pick_objects(int(self.rng.integers(1, 3))), travel_pct=pct)
        t = movers[0]
        axis = "width" if t.dx else "height"
        p0 = (t.x if t.dx else t.y) / self.size * 100
        p1 = p0 + (t.dx if t.dx else t.dy) * (self.frames - 1) / self.size * 100
        a, b = int(round(p0)), int(round(p1))
        return Scene(movers), dict(
            problem=f"How far does the {t.name} travel, as a percentage of the frame {axis}?",
            answer=str(pct),
            facts={"kind": "travel", "target": t.name, "start_pct": a, "end_pct": b, "travel_pct": pct},
            observation=f"Based on the question, I need to notice where the {t.name} starts and ends. "
            f"The {t.name} starts at {a}% of the frame {axis} and ends at {b}%.",
            think=f"Based on the observations, it travels about {pct} percent of the frame {axis}.",
        )

    # -- rows -------------------------------------------------------------------------------------------------
    def sample(self, index: int, media_dir: Path, prefix: str, ptype: str | None = None) -> Sample:
        """Row ``index``, of problem type ``ptype`` (default: round-robin over ``TASKS`` by index)."""
        ptype = ptype or TASKS[index % len(TASKS)]
        make = {
            "multiple choice": self.direction_mc,
            "numerical": self.count_numerical,
            "OCR": self.read_text_ocr,
            "free-form": self.describe_free_form,
            "regression": self.travel_regression,
        }[ptype]
        scene, d = make()
        pid = f"{prefix}-{index:05d}"
        # Counting works on a still frame too: a share of those rows are images, to exercise the image path.
        as_image = ptype == "numerical" and self.rng.random() < self.image_fraction
        if as_image:
            import cv2

            rel = f"images/{pid}.png"
            cv2.imwrite(str(media_dir / rel), _draw(scene, 0, self.size)[:, :, ::-1])
        else:
            rel = f"videos/{pid}.mp4"
            write_video(scene, media_dir / rel, self.frames, self.size, self.fps)
        problem = d["problem"].replace("in the video", "in the image") if as_image else d["problem"]
        return Sample(
            problem_id=pid,
            problem=problem,
            data_type="image" if as_image else "video",
            problem_type=ptype,
            solution=f"<answer>{d['answer']}</answer>",
            path=f"./{rel}",
            options=d.get("options", []),
            data_source="videop2r-synthetic",
            observation=d["observation"],
            process=d["think"],
            extra={"facts": d["facts"]},
        )


def parse_mix(text: str) -> dict[str, float]:
    """``"multiple choice=6,OCR=1"`` -> ``{"multiple choice": 6.0, "OCR": 1.0}``; a ValueError names a bad entry."""
    mix: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, eq, weight = entry.rpartition("=")
        name = name.strip()
        try:
            value = float(weight) if eq else None
        except ValueError:
            value = None
        if value is None or name not in TASKS:
            raise ValueError(f"bad mix entry {entry!r}: expected TYPE=WEIGHT with TYPE one of {', '.join(TASKS)}")
        mix[name] = value
    return check_mix(mix)


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    bad = [k for k, w in mix.items() if k not in TASKS or not w >= 0]
    if bad or not sum(mix.values()) > 0:
        raise ValueError(f"bad mix {mix!r}: weights >= 0 for types among {', '.join(TASKS)}, at least one > 0")
    return {k: float(w) for k, w in mix.items()}


def type_sequence(n: int, seed: int, mix: dict[str, float] | None) -> list[str]:
    """The problem type of each of ``n`` rows. ``mix=None``: round-robin over ``TASKS``. Otherwise counts in
    proportion to the weights (largest remainder, so that small splits follow the weights closely), in an order
    shuffled by ``seed`` alone: the same seed gives the same sequence."""
    if mix is None:
        return [TASKS[i % len(TASKS)] for i in range(n)]
    mix = check_mix(mix)
    total = sum(mix.values())
    exact = {t: n * mix.get(t, 0.0) / total for t in TASKS}
    counts = {t: int(exact[t]) for t in TASKS}
    by_remainder = sorted(TASKS, key=lambda t: (-(exact[t] - counts[t]), TASKS.index(t)))
    for t in by_remainder[: n - sum(counts.values())]:
        counts[t] += 1
    seq = [t for t in TASKS for _ in range(counts[t])]
    order = np.random.default_rng([seed, 0x6D6978]).permutation(n)  # its own stream: scenes stay independent
    return [seq[i] for i in order]


def make_synthetic(
    out: str | Path,
    n: int,
    seed: int,
    n_eval: int | None = None,
    progress: bool = True,
    style: str = "varied",
    mix: dict[str, float] | None = None,
    n_val: int = 0,
    eval_mix: dict[str, float] | None = None,
    **kw,
) -> dict:
    """Writes ``train.json`` (RL rows), ``cot.json`` (SFT rows with observation/process), ``eval.json`` and Parquet
    copies of each, plus the media, under ``out``. Returns the written paths.

    ``style``: ``varied`` or ``demo`` (module docstring). ``mix``: problem type -> weight for the training (and so
    the CoT) rows; None is round-robin over the five types. ``eval_mix``: the same for the eval split (None:
    round-robin, so that it measures every type equally whatever the training mix). ``n_val`` > 0 adds ``val.json``: rows of the training mix from
    their own seed, for decisions during training (e.g. when to stop SFT) that must not look at the eval split.
    ``kw`` goes to ``SyntheticTask`` (frames, size, fps, ...)."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_eval = max(len(TASKS), n // 4) if n_eval is None else n_eval
    mix = None if mix is None else check_mix(mix)
    eval_mix = None if eval_mix is None else check_mix(eval_mix)
    splits = {"train": (n, seed, mix), "eval": (n_eval, seed + 1_000_003, eval_mix)}
    if n_val:
        splits["val"] = (n_val, seed + 2_000_003, mix)
    written: dict[str, str] = {}
    from tqdm import tqdm

    for split, (count, split_seed, split_mix) in splits.items():
        task = SyntheticTask(split_seed, style=style, **kw)
        types = type_sequence(count, split_seed, split_mix)
        samples = [
            task.sample(i, out, split, types[i])
            for i in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, unit="video")
        ]
        rl = [Sample(**{**s.to_row(), "observation": None, "process": None}) for s in samples]
        written[split] = str(write_json(rl, out / f"{split}.json"))
        write_parquet(rl, out / f"{split}.parquet")
        if split == "train":
            written["cot"] = str(write_json(samples, out / "cot.json"))
            write_parquet(samples, out / "cot.parquet")
    manifest = {"n": n, "n_eval": n_eval, "n_val": n_val, "seed": seed, "style": style, "mix": mix, **kw, **written}
    if eval_mix is not None:
        manifest["eval_mix"] = eval_mix
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return written


def required_phrases(facts: dict) -> list[str]:
    """The phrases an observation must contain, in this order, for the answer to follow from it."""
    kind = facts.get("kind")
    if kind == "direction":
        return [facts["target"], facts["start"], facts["end"]]
    if kind == "count":
        return [f"{facts['count']} {facts['shape']}"]
    if kind == "text":
        return [facts["text"]]
    if kind == "travel":
        return [facts["target"], f"{facts['start_pct']}%", f"{facts['end_pct']}%"]
    raise ValueError(f"unknown synthetic fact kind {kind!r}")


def observation_suffices(facts: dict, observation: str) -> bool:
    """The rule-based judge for the synthetic task: does the observation state the needed facts, in order?
    A stand-in for the judge LLM in demos and tests; it only knows this generator's facts."""
    text, pos = observation.lower(), 0
    for phrase in required_phrases(facts):
        found = text.find(phrase.lower(), pos)
        if found < 0:
            return False
        pos = found + len(phrase)
    return True
