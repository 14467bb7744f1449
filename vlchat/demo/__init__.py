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


def endless_copy(parent: Path) -> Path:
    """A copy of the demo model under ``parent`` that never emits its end-of-answer token.

    It talks until stopped, which is what cancel tests and fixed-length benchmarks need.
    """
    import json
    import shutil

    folder = parent / "demo-endless"
    shutil.copytree(MODEL_DIR, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = None
    config_path.write_text(json.dumps(config))
    return folder
