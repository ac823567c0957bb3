"""supersam_hf: turn a Hugging Face SAM checkpoint into smaller standard SAM checkpoints through a SuperSAM supernet."""

from transformers import AutoConfig, AutoModel

from .configuration_supersam import SuperSamConfig, build_sam_config
from .modeling_supersam import SuperSamModel
from .search_space import SearchSpace, SubnetConfig

__version__ = "0.1.0"

AutoConfig.register("supersam", SuperSamConfig)
AutoModel.register(SuperSamConfig, SuperSamModel)

__all__ = ["SuperSamConfig", "SuperSamModel", "SubnetConfig", "SearchSpace", "build_sam_config", "__version__"]
