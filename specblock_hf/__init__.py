"""SpecBlock tree speculative decoding as a drop-in for Hugging Face `model.generate()`."""

from transformers import AutoConfig, AutoModel

from .adaptation import AdaptationConfig, OnlineAdaptation
from .auto import load_drafter
from .candidates_eagle3 import Eagle3CandidateGenerator, Eagle3TreeConfig
from .candidates_specblock import SpecBlockCandidateGenerator, SpecBlockTreeConfig
from .configuration_eagle3 import Eagle3Config
from .configuration_specblock import SpecBlockConfig
from .generation import speculative_decode
from .integration import SpecBlockGenerationMixin, disable, enable, generate
from .modeling_eagle3 import Eagle3Drafter
from .modeling_specblock import SpecBlockDrafter
from .stats import GenerationStats
from .tree import DraftTree

AutoConfig.register("specblock", SpecBlockConfig, exist_ok=True)
AutoConfig.register("eagle3", Eagle3Config, exist_ok=True)
AutoModel.register(SpecBlockConfig, SpecBlockDrafter, exist_ok=True)
AutoModel.register(Eagle3Config, Eagle3Drafter, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "AdaptationConfig",
    "DraftTree",
    "Eagle3CandidateGenerator",
    "Eagle3Config",
    "Eagle3Drafter",
    "Eagle3TreeConfig",
    "GenerationStats",
    "OnlineAdaptation",
    "SpecBlockCandidateGenerator",
    "SpecBlockConfig",
    "SpecBlockDrafter",
    "SpecBlockGenerationMixin",
    "SpecBlockTreeConfig",
    "disable",
    "enable",
    "generate",
    "load_drafter",
    "speculative_decode",
]
