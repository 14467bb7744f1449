"""The demo model: a tiny LLaVA-architecture model trained by vlchat on synthetic pictures.

It answers questions about the colours, kinds and number of shapes in a picture, and nothing
else. It ships with the package so vlchat works, and is tested, with no network and no GPU.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "model"
SAMPLES_DIR = HERE / "samples"
DEMO_NAME = "demo"
DEMO_LABEL = "demo model"
