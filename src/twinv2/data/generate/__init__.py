"""Generated worlds: `twinv2 generate`, the default data for demos, tests and benchmarks.

A world where the paper's premise (the far past of a life cycle predicts today's clicks) can hold or fail
depending on documented knobs (`WorldConfig`, above all `far_past_signal`), not one built to make a model win.

    from twinv2.data.generate import preset, generate_world
    root = generate_world(preset("tiny", seed=3), "out/tiny")
"""

from twinv2.data.generate.config import PRESETS, WorldConfig, preset
from twinv2.data.generate.world import generate_world

__all__ = ["PRESETS", "WorldConfig", "generate_world", "preset"]
