from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="supersam_hf",
    version="0.1.0",
    description="SuperSAM for Hugging Face: turn a SAM checkpoint into smaller standard SAM checkpoints via a weight-sharing supernetwork",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The evaluate metric script, the model-card template and the pretrained stand-in SAM ship inside the package.
    package_data={"supersam_hf": ["metrics/sam_miou/*.py", "metrics/sam_miou/*.md", "templates/*.md",
                                  "standin/*.json", "standin/*.safetensors", "standin/*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1,<=2.14.1",
        "torchvision",
        "transformers>=5.0",
        "datasets>=3.0",
        "accelerate>=1.0",
        "peft>=0.13",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "opentuner>=0.8.8",
        "safetensors",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "pycocotools>=2.0.7",  # COCO / LVIS / SA-1B polygons and RLE (supersam_hf.data.coco)
        "torchdata>=0.8",  # StatefulDataLoader: streaming training resumes exactly, with workers
    ],
    extras_require={
        # tensorboard and wandb (offline) for the tracker tests.
        "test": ["pytest>=8", "tensorboard", "wandb"],
        # Experiment trackers for `--report_to` (accelerate drives them; any other it supports works once installed).
        "trackers": ["tensorboard", "wandb", "trackio"],
        "tensorboard": ["tensorboard"],
        # ONNX export, ONNX Runtime inference / latency and INT8 quantization (supersam_hf.onnx_export).
        "onnx": ["onnx>=1.16", "onnxscript", "onnxruntime>=1.18"],
    },
    entry_points={"console_scripts": ["supersam=supersam_hf.commands.cli:main"]},
)
